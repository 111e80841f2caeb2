"""Search spaces: which knobs of a backbone vary, loaded from ``search_spaces/*.yaml``.

A space is data; ``sample(trial)`` turns an Optuna trial's choices into an
``ArchSpec``.  Knobs: which block groups may take CondConv and how (``placement``),
the expert counts, the routing activations, per-group or shared choices, squeeze-excite
and the width multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from ccsearch.arch import ArchSpec, get_backbone
from ccsearch.config import check_fields, load_yaml_mapping, resolve_config
from ccsearch.errors import UserError
from ccsearch.layers import ROUTING_ACTIVATIONS
from ccsearch.validate import is_integer

PLACEMENTS = ("any", "one", "all")
SE_CHOICES = ("backbone", "none", "all")  # as shipped, SE removed, SE 0.25 in every group


@dataclass(frozen=True)
class SearchSpace:
    name: str
    backbone: str
    groups: tuple[int, ...] = ()  # groups that may take CondConv (1..N); empty = all
    placement: str = "any"  # any: each group on/off; one: exactly one group; all: every group
    allow_static: bool = True  # one/all: also offer the backbone without CondConv
    experts: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    routing: tuple[str, ...] = ("sigmoid",)
    shared: bool = False  # one experts/routing choice for every CondConv group
    se: tuple[str, ...] = ("backbone",)
    width: tuple[float, ...] = (1.0,)
    # Candidates route with Routing(calibrated=True): every activation starts like sigmoid,
    # so a few proxy epochs rank layouts by capacity (benchmarks/README.md).  False keeps
    # the paper's raw routing, for reproducing its routing comparison.
    calibrated_routing: bool = True
    description: str = ""
    source: str = field(default="", compare=False)  # the file it came from

    def __post_init__(self) -> None:
        where = f"search space {self.name!r}"
        base = get_backbone(self.backbone)  # unknown backbone -> UserError
        n = len(base.groups)
        groups = tuple(self.groups) or tuple(range(1, n + 1))
        object.__setattr__(self, "groups", groups)
        bad = [g for g in groups if not is_integer(g, 1) or g > n]
        if bad:
            raise UserError(
                f"{where}: groups {bad} do not exist; {self.backbone} has groups 1..{n}"
            )
        if not isinstance(self.calibrated_routing, bool):
            raise UserError(
                f"{where}: calibrated_routing must be true or false, "
                f"got {self.calibrated_routing!r}"
            )
        if self.placement not in PLACEMENTS:
            raise UserError(f"{where}: placement {self.placement!r} is not one of {PLACEMENTS}")
        if not self.experts or not all(is_integer(e, 1) for e in self.experts):
            raise UserError(
                f"{where}: experts must be a list of integers >= 1, got {list(self.experts)}"
            )
        if not self.routing or any(r not in ROUTING_ACTIVATIONS for r in self.routing):
            raise UserError(
                f"{where}: routing must be a list from {ROUTING_ACTIVATIONS}, got {list(self.routing)}"
            )
        if not self.se or any(s not in SE_CHOICES for s in self.se):
            raise UserError(f"{where}: se must be a list from {SE_CHOICES}, got {list(self.se)}")
        if not self.width or any(
            not isinstance(w, int | float) or not 0 < w <= 8 for w in self.width
        ):
            raise UserError(
                f"{where}: width must be a list of multipliers in (0, 8], got {list(self.width)}"
            )

    # ---- sampling -----------------------------------------------------------------------

    def sample(self, trial: optuna.Trial, suggest_all: bool = False) -> ArchSpec:
        """The architecture for this trial's choices.

        ``suggest_all`` suggests every parameter even where it does not matter (grid
        search needs a fixed parameter set); unused choices then map to the same spec.
        """
        width = self._pick(trial, "width", self.width)
        spec = get_backbone(self.backbone, width)
        se = self._pick(trial, "se", self.se)
        if se != "backbone":
            ratio = 0.25 if se == "all" else 0.0
            spec = replace(spec, groups=tuple(replace(g, se=ratio) for g in spec.groups))
        groups = list(spec.groups)
        for g, (experts, routing) in self._condconv_choices(trial, suggest_all).items():
            groups[g - 1] = replace(groups[g - 1], experts=experts, routing=routing)
        meta = {"search_space": self.name, "params": dict(trial.params)}
        return replace(spec, name=f"{self.name}_t{trial.number}", groups=tuple(groups),
                       calibrated_routing=self.calibrated_routing, meta=meta)

    def _condconv_choices(
        self, trial: optuna.Trial, suggest_all: bool
    ) -> dict[int, tuple[int, str]]:
        """Block group -> (experts, routing) for every group that gets CondConv."""
        pick = self._pick
        if self.placement == "any" and not self.shared:
            choices = {}
            for g in self.groups:  # per group: 0 experts = static conv
                experts = trial.suggest_categorical(f"g{g}_experts", [0, *self.experts])
                if experts or suggest_all:
                    routing = pick(trial, f"g{g}_routing", self.routing)
                if experts:
                    choices[g] = (experts, routing)
            return choices
        if self.placement == "any":
            chosen = [
                g for g in self.groups if trial.suggest_categorical(f"g{g}_condconv", [False, True])
            ]
        elif self.placement == "one":
            group = pick(
                trial, "condconv_group", ([0] if self.allow_static else []) + list(self.groups)
            )
            chosen = [group] if group else []
        else:
            chosen = (
                list(self.groups)
                if pick(trial, "condconv", [False, True] if self.allow_static else [True])
                else []
            )
        if self.shared:
            if not chosen and not suggest_all:
                return {}
            experts, routing = (
                pick(trial, "experts", self.experts),
                pick(trial, "routing", self.routing),
            )
            return {g: (experts, routing) for g in chosen}
        per_group = {
            g: (
                pick(trial, f"g{g}_experts", self.experts),
                pick(trial, f"g{g}_routing", self.routing),
            )
            for g in (self.groups if suggest_all else chosen)
        }
        return {g: per_group[g] for g in chosen}

    @staticmethod
    def _pick(trial: optuna.Trial, name: str, choices: tuple | list) -> Any:
        """A categorical choice; single-option knobs are fixed, not suggested."""
        choices = list(choices)
        return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter with its choices, for Optuna's GridSampler."""
        grid: dict[str, list[Any]] = {}

        def add(name: str, choices) -> None:
            if len(choices) > 1:
                grid[name] = list(choices)

        add("width", self.width)
        add("se", self.se)
        if self.placement == "any":
            for g in self.groups:
                if self.shared:
                    grid[f"g{g}_condconv"] = [False, True]
                else:
                    grid[f"g{g}_experts"] = [0, *self.experts]
                    add(f"g{g}_routing", self.routing)
        elif self.placement == "one":
            add("condconv_group", ([0] if self.allow_static else []) + list(self.groups))
        else:
            add("condconv", [False, True] if self.allow_static else [True])
        if self.shared:
            add("experts", self.experts)
            add("routing", self.routing)
        elif self.placement != "any":
            for g in self.groups:
                add(f"g{g}_experts", self.experts)
                add(f"g{g}_routing", self.routing)
        return grid


def load_search_space(name_or_path: str | Path) -> SearchSpace:
    """A shipped space by name (``search_spaces/NAME.yaml``) or any YAML file."""
    path = resolve_config("search_spaces", name_or_path)
    data = load_yaml_mapping(path)
    data.setdefault("name", path.stem)
    known = set(SearchSpace.__dataclass_fields__) - {"source"}
    check_fields(path, data, known)
    if "backbone" not in data:
        raise UserError(f"{path}: the field 'backbone' is required")
    for key in ("groups", "experts", "routing", "se", "width"):
        if key in data:
            value = data[key]
            if key == "groups" and value == "all":
                value = []
            data[key] = tuple(value) if isinstance(value, list) else (value,)
    try:
        return SearchSpace(**data, source=str(path))
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except TypeError as err:
        raise UserError(f"{path}: {err}") from None
