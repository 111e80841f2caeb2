"""Study configuration (``studies/*.yaml``): a search space bound to a budget and a method."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import optuna

from ccsearch.arch import ArchSpec, get_backbone
from ccsearch.arch.resolve import SPEC_SUFFIXES, resolve_spec
from ccsearch.config import check_fields, load_yaml_mapping, reads_as_path, resolve_config
from ccsearch.errors import UserError
from ccsearch.madds import CONVENTIONS, count_madds, exact_madds_label, format_madds, parse_madds
from ccsearch.search.space import SearchSpace, load_search_space
from ccsearch.train.proxy import ProxyConfig, get_proxy
from ccsearch.validate import nonnegative_int, positive_int

SAMPLERS = ("nsga2", "tpe", "random", "grid")
REFERENCE_FIELDS = ("model", "condconv", "experts", "routing", "width")
PRUNERS = ("median", "successive_halving", "none")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    search_space: str
    budget: int  # MADDs at 224px; candidates above it are never trained
    proxy: str = "smoke"
    sampler: str = "nsga2"  # two objectives (top-1 up, MADDs down), budget as a constraint
    pruner: str = "median"  # on the per-epoch accuracy curves (see ccsearch/search/pruners.py)
    trials: int = 12  # candidates to train (infeasible and duplicate ones are not counted)
    seed: int = 0
    convention: str = "paper"
    population_size: int = 8  # NSGA-II generation size; small because proxy runs are costly
    startup_trials: int = 4  # random trials before TPE models / pruning kicks in
    description: str = ""
    epochs: int | None = None  # replaces the proxy's epochs (``run --epochs``)
    # Seeds each candidate trains with (seed, seed + 1, ...): its top-1 is their mean,
    # which the front, ``best``, NSGA-II and the pruner use (see ``ccsearch proxy-check``).
    repeats: int = 1
    # Named fixed architectures trained first, with the same proxy and seeds, and marked on
    # every table and plot: name -> a backbone name or spec .json, or a mapping of
    # model/condconv/experts/routing/width as the CLI takes them.
    references: dict[str, Any] = field(default_factory=dict)
    count_references: bool = False  # do trained references count towards ``trials``?

    def __post_init__(self) -> None:
        where = f"study {self.name!r}"
        if self.sampler not in SAMPLERS:
            raise UserError(f"{where}: sampler {self.sampler!r} is not one of {SAMPLERS}")
        if self.pruner not in PRUNERS:
            raise UserError(f"{where}: pruner {self.pruner!r} is not one of {PRUNERS}")
        if self.convention not in CONVENTIONS:
            raise UserError(f"{where}: convention {self.convention!r} is not one of {CONVENTIONS}")
        for key in ("trials", "population_size", "startup_trials", "repeats"):
            positive_int(key, getattr(self, key), where=where)
        if self.sampler == "nsga2" and self.population_size < 2:  # NSGA-II breeds pairs
            raise UserError(
                f"{where}: the nsga2 sampler needs population_size >= 2, "
                f"got {self.population_size!r}"
            )
        positive_int("epochs", self.epochs, where=where, optional=True)
        if not isinstance(self.references, dict):
            raise UserError(f"{where}: references must map names to models, got {self.references!r}")
        if not isinstance(self.count_references, bool):
            raise UserError(f"{where}: count_references must be true or false")
        nonnegative_int("seed", self.seed, where=where)

    @property
    def wanted(self) -> int:
        """Trained trials the study ends with: ``trials``, plus the references unless they
        count towards it."""
        return self.trials + (0 if self.count_references else len(self.references))

    def reference_specs(self) -> dict[str, ArchSpec]:
        """The references as architectures (one clear line for a bad one)."""
        specs = {}
        for name, model in self.references.items():
            options = {"model": model} if isinstance(model, str) else model
            if not isinstance(options, dict) or "model" not in options:
                raise UserError(f"study {self.name!r}: reference {name!r} needs a model, got {model!r}")
            unknown = sorted(set(options) - set(REFERENCE_FIELDS))
            if unknown:
                raise UserError(f"study {self.name!r}: reference {name!r} has unknown fields "
                                f"{unknown}; known: {', '.join(REFERENCE_FIELDS)}")
            condconv = options.get("condconv")
            # CondConv placed here routes like the study's candidates (calibrated or raw).
            calibrated = condconv is not None and self.space().calibrated_routing
            spec = resolve_spec(str(options["model"]), None if condconv is None else str(condconv),
                                options.get("experts"), options.get("routing"),
                                float(options.get("width", 1.0)), calibrated_routing=calibrated)
            specs[name] = replace(spec, name=f"{self.name}_{name}")
        return specs

    def seeds(self) -> list[int]:
        """The training seeds of every candidate: the same for all, so candidates differ
        by their architecture and not by their data order or initialisation draw."""
        return [self.seed + r for r in range(self.repeats)]

    def space(self) -> SearchSpace:
        return load_search_space(self.search_space)

    def proxy_config(self) -> ProxyConfig:
        """The proxy every trial trains on: ``proxy`` with the study's ``epochs``, if set."""
        return get_proxy(self.proxy, epochs=self.epochs)

    def check_budget(self) -> None:
        """Refuse a budget below the space's smallest candidate: nothing would train."""
        space = self.space()
        smallest = count_madds(smallest_candidate(space), convention=self.convention).madds
        if self.budget >= smallest:
            return
        se = {"none": ", SE off", "backbone": "", "all": ", SE everywhere"}[_smallest_se(space)]
        hint, b = "", self.budget
        if b < 10**6:  # almost surely a missing unit
            hint = (f"; budgets count multiply-adds: did you mean {b}M?" if b * 10**6 >= smallest
                    else f"; budgets count multiply-adds and take a unit ({b}M is {b} million)")
        raise UserError(
            f"budget {exact_madds_label(self.budget)} is below every candidate of "
            f"{space.name}: the smallest, {space.backbone} without CondConv at width "
            f"{min(space.width):g}{se}, has {format_madds(smallest)} MADDs "
            f"({self.convention} convention, 224px){hint}"
        )

    def with_overrides(self, **overrides: Any) -> StudyConfig:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "budget" in overrides:
            overrides["budget"] = parse_madds(overrides["budget"])
        return replace(self, **overrides) if overrides else self

    def run_name(self, default_budget: int) -> str:
        """The run folder's name: the study's, or ``<space>_<budget>`` for another budget."""
        if self.budget == default_budget:
            return self.name
        label = exact_madds_label(self.budget).lower().replace(".", "p")  # exact: no collisions
        return f"{Path(self.search_space).stem}_{label}"

    def changes_from(self, stored: StudyConfig) -> list[str]:
        """What this run asks for that differs from the ``stored`` study, one line per field,
        so a resume can refuse them; only more ``trials`` (and ``description``) may change."""
        changes = []
        for f in fields(self):
            old, new = getattr(stored, f.name), getattr(self, f.name)
            if old == new or f.name == "description" or (f.name == "trials" and new > old):
                continue
            if f.name == "budget":
                old, new = (f"{exact_madds_label(v)} ({v:,})" for v in (old, new))
            else:
                old, new = repr(old), repr(new)
            line = f"{f.name}: the study has {old}, this run asks for {new}"
            if f.name == "trials":
                line += " (a resume may only raise it)"
            changes.append(line)
        return changes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def make_sampler(
        self, space: SearchSpace, seed_stream: int = 0
    ) -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded from ``seed`` and ``seed_stream``: 0 for the process that
        starts the study, > 0 for one that joins a study with trials (resume, worker): a
        sampler seeded like the first one would replay its draws as duplicates."""
        seed = (self.seed + 1_000_003 * seed_stream) % 2**32
        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=seed)
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(
                n_startup_trials=self.startup_trials, seed=seed, multivariate=True
            )
        if self.sampler == "grid":
            return optuna.samplers.GridSampler(space.grid() or {"_": [0]}, seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def _smallest_se(space: SearchSpace) -> str:
    return next(s for s in ("none", "backbone", "all") if s in space.se)


def smallest_candidate(space: SearchSpace) -> ArchSpec:
    """A lower bound of the space's MADDs: its backbone without CondConv at its smallest
    width, with the least squeeze-excite it allows."""
    spec = get_backbone(space.backbone, min(space.width))
    se = _smallest_se(space)
    if se != "backbone":
        ratio = 0.25 if se == "all" else 0.0
        spec = replace(spec, groups=tuple(replace(g, se=ratio) for g in spec.groups))
    return spec


def load_study_config(name_or_path: str | Path) -> StudyConfig:
    path = resolve_config("studies", name_or_path)
    data = load_yaml_mapping(path)
    data.setdefault("name", path.stem)
    for key in ("search_space", "proxy"):  # a file named in a study is next to the study
        value = data.get(key)
        if isinstance(value, str) and reads_as_path(value):
            data[key] = str((path.parent / Path(value).expanduser()).resolve())
    references = data.get("references") or {}
    if not isinstance(references, dict):
        raise UserError(f"{path}: references must map names to models, got {references!r}")
    for name, model in references.items():
        options = model if isinstance(model, dict) else {"model": model}
        if isinstance(options.get("model"), str) and reads_as_path(options["model"], SPEC_SUFFIXES):
            options = {**options, "model": str((path.parent / Path(options["model"]).expanduser()).resolve())}
            data["references"][name] = options
    known = set(StudyConfig.__dataclass_fields__)
    check_fields(path, data, known)
    for key in ("search_space", "budget"):
        if key not in data:
            raise UserError(f"{path}: the field {key!r} is required")
    try:
        data["budget"] = parse_madds(data["budget"])
        config = StudyConfig(**data)
        config.space()  # validate the space it names now, with the study's path in the error
        config.reference_specs()
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except TypeError as err:
        raise UserError(f"{path}: {err}") from None
    return config
