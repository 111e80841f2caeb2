"""``ArchSpec``: the plain, JSON-serialisable description of a candidate network.

The spec is the single currency of ccsearch: the search controller samples it, the
MADD counter and the trainer take it, storage records it and export writes it.  A
block group is also writable as one short timm-style string, e.g.
``ir_r3_k5_s2_e6_c160_se0.25_cc8_sigmoid`` (block type, repeats, kernel, stride,
expansion, output channels, SE ratio, CondConv experts, routing activation).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ccsearch.errors import UserError
from ccsearch.layers import ROUTING_ACTIVATIONS
from ccsearch.validate import is_integer, nonnegative_int, positive_int

# ds: depthwise-separable with a linear pointwise conv (MnasNet / EfficientNet first block);
# dsa: the same with an activation after the pointwise conv (MobileNetV1);
# ir: inverted residual / MBConv (MobileNetV2, MnasNet, EfficientNet);
# bottleneck: ResNet bottleneck, where `expansion` is ResNet's out/mid ratio (4).
BLOCK_TYPES = ("ds", "dsa", "ir", "bottleneck")
ACTIVATIONS = ("relu", "relu6", "swish")
# How a width multiplier treats the head conv, per family's published rule:
# scaled: like every layer (EfficientNet); at_least: max(head, scaled head) (MobileNetV2,
# timm and TF-slim); fixed: unchanged (MnasNet, TF reference).
HEAD_SCALINGS = ("scaled", "at_least", "fixed")


# 16 GB of float32 weights: far above any CondConv network (ResNet-50 with 32 experts in
# every group has about 0.8 billion), far below what a typo (channels: 1e9) asks for.
MAX_WEIGHTS = 4_000_000_000


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise UserError(f"{where}: {message}")


@dataclass(frozen=True)
class BlockGroup:
    """A run of ``repeats`` blocks of one type; only the first has ``stride``."""

    block: str
    repeats: int
    kernel: int
    stride: int
    channels: int
    expansion: float = 1.0
    se: float = 0.0  # squeeze-excite ratio of the block's input channels; 0 = no SE
    experts: int = 0  # CondConv experts for every conv of the group's blocks; 0 = static
    routing: str = "sigmoid"  # routing activation, the paper's best
    skip: bool = True  # residual connection where shapes allow

    def validate(self, where: str = "group") -> None:
        _check(
            self.block in BLOCK_TYPES, where, f"block {self.block!r} is not one of {BLOCK_TYPES}"
        )
        for name in ("repeats", "kernel", "stride", "channels"):
            positive_int(name, getattr(self, name), where=where)
        _check(self.kernel % 2 == 1, where, f"kernel must be odd, got {self.kernel}")
        _check(
            isinstance(self.expansion, int | float) and self.expansion > 0,
            where,
            f"expansion must be > 0, got {self.expansion!r}",
        )
        _check(
            isinstance(self.se, int | float) and 0 <= self.se <= 1,
            where,
            f"se must be a ratio in [0, 1], got {self.se!r}",
        )
        nonnegative_int("experts", self.experts, where=where, note=" (0 = static conv)")
        _check(
            self.routing in ROUTING_ACTIVATIONS,
            where,
            f"routing {self.routing!r} is not one of {ROUTING_ACTIVATIONS}",
        )

    def to_string(self) -> str:
        """The timm-style one-line form, e.g. ``ir_r2_k3_s2_e6_c24_se0.25``."""
        parts = [self.block, f"r{self.repeats}", f"k{self.kernel}", f"s{self.stride}"]
        parts += [f"e{self.expansion:g}", f"c{self.channels}"]
        if self.se:
            parts.append(f"se{self.se:g}")
        if self.experts:
            parts += [f"cc{self.experts}", self.routing]
        if not self.skip:
            parts.append("noskip")
        return "_".join(parts)

    @classmethod
    def from_string(cls, text: str) -> BlockGroup:
        """Parse the form written by :meth:`to_string`."""
        block, *tokens = text.split("_")
        values: dict[str, Any] = {"block": block}
        keys = {"r": "repeats", "k": "kernel", "s": "stride", "c": "channels", "cc": "experts"}
        for token in tokens:
            if token == "noskip":
                values["skip"] = False
            elif token in ROUTING_ACTIVATIONS:
                values["routing"] = token
            else:
                key = token.rstrip("0123456789.")
                number = token[len(key) :]
                try:
                    if key in keys:
                        values[keys[key]] = int(number)
                    elif key == "e":
                        values["expansion"] = float(number)
                    elif key == "se":
                        values["se"] = float(number)
                    else:
                        raise ValueError
                except ValueError:
                    raise UserError(f"block string {text!r}: cannot read token {token!r}") from None
        try:
            group = cls(**values)
        except TypeError as err:
            raise UserError(f"block string {text!r}: {err}") from None
        group.validate(f"block string {text!r}")
        return group


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: stem, block groups, head and classifier."""

    name: str
    groups: tuple[BlockGroup, ...]
    stem_channels: int = 32
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_pool: bool = False  # ResNet's 3x3/2 max-pool after the stem
    head_channels: int = 1280  # 1x1 conv before pooling; 0 = none (MobileNetV1, ResNet)
    head_scaling: str = "scaled"  # what scale_width does to the head: one of HEAD_SCALINGS
    num_classes: int = 1000
    activation: str = "relu"
    dropout: float = 0.2  # before the classifier, as in MnasNet / EfficientNet
    in_channels: int = 3
    # Routing that starts like sigmoid for every activation (``Routing(calibrated=True)``):
    # what a short proxy needs to rank layouts; False is the paper's raw routing.
    calibrated_routing: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form provenance

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        self.validate()

    def validate(self) -> None:
        where = f"spec {self.name!r}"
        _check(len(self.groups) > 0, where, "needs at least one block group")
        for i, group in enumerate(self.groups, start=1):
            _check(isinstance(group, BlockGroup), where, f"group {i} is not a BlockGroup")
            group.validate(f"{where} group {i}")
        for name in ("stem_channels", "stem_kernel", "stem_stride", "num_classes", "in_channels"):
            positive_int(name, getattr(self, name), where=where)
        nonnegative_int("head_channels", self.head_channels, where=where)
        _check(
            self.head_scaling in HEAD_SCALINGS,
            where,
            f"head_scaling {self.head_scaling!r} is not one of {HEAD_SCALINGS}",
        )
        _check(
            self.activation in ACTIVATIONS,
            where,
            f"activation {self.activation!r} is not one of {ACTIVATIONS}",
        )
        _check(
            isinstance(self.dropout, int | float) and not isinstance(self.dropout, bool)
            and 0 <= self.dropout < 1,
            where,
            f"dropout must be in [0, 1), got {self.dropout!r}",
        )
        weights = self.weight_estimate()
        _check(
            weights <= MAX_WEIGHTS,
            where,
            f"about {weights:.3g} weights, over the {MAX_WEIGHTS:,} this tool builds "
            "(a channel count, expansion or expert count too large?)",
        )
        _check(
            isinstance(self.calibrated_routing, bool),
            where,
            f"calibrated_routing must be true or false, got {self.calibrated_routing!r}",
        )

    def weight_estimate(self) -> float:
        """About how many weights the network has, from its shapes alone (never built):
        what keeps a mistyped spec from filling the machine's memory."""
        total = float(self.in_channels) * self.stem_channels * self.stem_kernel**2
        channels = float(self.stem_channels)
        for g in self.groups:
            for _ in range(g.repeats):
                if g.block == "bottleneck":
                    mid = g.channels / g.expansion
                    spatial = mid * mid * g.kernel**2  # a full kxk conv
                else:
                    mid = channels * g.expansion if g.block == "ir" else channels
                    spatial = mid * g.kernel**2  # depthwise
                main = channels * mid + spatial + mid * g.channels
                total += main * max(1, g.experts) + channels * g.channels  # + a shortcut
                channels = float(g.channels)
        head = float(self.head_channels or channels)
        return total + channels * head + head * self.num_classes

    def routing_is_calibrated(self) -> bool:
        """Does calibration change any of this network's routing?  (Sigmoid is the same
        function either way, and static groups have none.)"""
        return self.calibrated_routing and any(
            g.experts and g.routing != "sigmoid" for g in self.groups
        )

    # ---- CondConv placement -------------------------------------------------------------

    def with_condconv(
        self, groups: list[int] | tuple[int, ...], experts: int = 8, routing: str = "sigmoid"
    ) -> ArchSpec:
        """CondConv with ``experts`` experts in the given block groups (numbered 1..N)."""
        n = len(self.groups)
        for g in groups:
            if not is_integer(g, 1) or g > n:
                raise UserError(f"block group {g!r} does not exist: {self.name} has groups 1..{n}")
        if not is_integer(experts, 1):
            raise UserError(f"experts must be an integer >= 1, got {experts!r}")
        if routing not in ROUTING_ACTIVATIONS:
            raise UserError(f"routing {routing!r} is not one of {ROUTING_ACTIVATIONS}")
        chosen = set(groups)
        new_groups = tuple(
            replace(group, experts=experts, routing=routing) if i in chosen else group
            for i, group in enumerate(self.groups, start=1)
        )
        return replace(self, groups=new_groups)

    def condconv_groups(self) -> list[int]:
        """Numbers (1..N) of the groups that use CondConv."""
        return [i for i, g in enumerate(self.groups, start=1) if g.experts]

    def scale_width(self, multiplier: float, divisor: int = 8) -> ArchSpec:
        """Every channel count times ``multiplier``, rounded to a multiple of ``divisor``.

        The head follows ``head_scaling``, the family's own rule.
        """
        if not isinstance(multiplier, int | float) or not 0 < multiplier <= 8:
            raise UserError(f"width multiplier must be in (0, 8], got {multiplier!r}")
        if multiplier == 1:
            return self

        def scale(channels: int) -> int:
            return make_divisible(channels * multiplier, divisor)

        head = self.head_channels
        if head and self.head_scaling == "scaled":
            head = scale(head)
        elif head and self.head_scaling == "at_least":
            head = max(head, scale(head))
        return replace(
            self,
            name=f"{self.name}_w{multiplier:g}",
            stem_channels=scale(self.stem_channels),
            head_channels=head,
            groups=tuple(replace(g, channels=scale(g.channels)) for g in self.groups),
        )

    # ---- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = [asdict(g) for g in self.groups]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        if not isinstance(data, dict):
            raise UserError(f"an ArchSpec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"ArchSpec: unknown field(s) {unknown}; known: {sorted(known)}")
        if "name" not in data or "groups" not in data:
            raise UserError("ArchSpec: the fields 'name' and 'groups' are required")
        if not isinstance(data["groups"], list | tuple):
            raise UserError(f"ArchSpec: groups must be a list of block groups, got {data['groups']!r}")
        group_fields = {f.name for f in fields(BlockGroup)}
        groups = []
        for i, raw in enumerate(data["groups"], start=1):
            if isinstance(raw, str):
                groups.append(BlockGroup.from_string(raw))
                continue
            if not isinstance(raw, dict):
                raise UserError(f"ArchSpec group {i}: expected an object or a block string")
            bad = sorted(set(raw) - group_fields)
            if bad:
                raise UserError(f"ArchSpec group {i}: unknown field(s) {bad}")
            try:
                groups.append(BlockGroup(**raw))
            except TypeError as err:
                raise UserError(f"ArchSpec group {i}: {err}") from None
        try:
            return cls(**{**data, "groups": tuple(groups)})
        except TypeError as err:  # a field of the wrong type where validate compares it
            raise UserError(f"ArchSpec: {err}") from None

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"ArchSpec JSON is invalid: {err}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise UserError(f"cannot read spec file {path}: {err.strerror}") from None
        try:
            return cls.from_json(text)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below 90% of it (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def spec_digest(spec: ArchSpec) -> str:
    """A short stable identifier of the network a spec builds.

    Ignores name, meta and head_scaling (a rule for rescaling, not part of the network),
    and calibrated_routing where it changes nothing (no non-sigmoid CondConv group), so
    the static and sigmoid networks keep the digests they had before the field existed.
    """
    data = spec.to_dict()
    for key in ("name", "meta", "head_scaling"):
        data.pop(key)
    if not spec.routing_is_calibrated():
        data.pop("calibrated_routing")
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


__all__ = [
    "ACTIVATIONS",
    "BLOCK_TYPES",
    "HEAD_SCALINGS",
    "ArchSpec",
    "BlockGroup",
    "make_divisible",
    "spec_digest",
]
