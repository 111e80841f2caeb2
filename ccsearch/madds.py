"""Multiply-add counting with fvcore, in the paper's convention or fvcore's.

One multiply-add counts once (fvcore's unit).  The **paper** convention counts
convolutions, linear layers and, for CondConv, the kernel-mixing matmul and the
routing FC; batch norm (folded into convolutions at inference), activations,
pooling and element-wise ops are not counted.  The **fvcore** convention is
fvcore's default table, which also counts batch norm and adaptive pooling (~+4%).

fvcore skips ops it has no handle for and counts them as zero.  In the paper
convention every op a model runs must be either counted or listed in
``NOT_COUNTED`` on purpose; anything else raises, so nothing is silently missed.

A spec is counted part by part (stem, each block group, head), and each part's fvcore
count is kept for the process: a search meets the same groups again and again, so a
candidate costs a fraction of a millisecond once its parts are known (see
``madds_parts``).  ``tests/test_madds.py`` checks the sums against whole-model traces.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import (
    addmm_flop_jit,
    bmm_flop_jit,
    conv_flop_jit,
    einsum_flop_jit,
    get_shape,
    linear_flop_jit,
    matmul_flop_jit,
)
from torch import nn

from ccsearch.arch import ArchSpec, CondConvNet, build_model
from ccsearch.errors import UserError
from ccsearch.layers import ROUTING_ACTIVATIONS, CondConv2d, Routing
from ccsearch.validate import at_least

CONVENTIONS = ("paper", "fvcore")


def _einsum_madds(inputs: list[Any], outputs: list[Any]) -> int:
    """Exact MADDs of a two-operand einsum: the product of every index's size.

    fvcore's own handle reads numpy's printed FLOP count, which is rounded to 4 digits
    (CondConv's experts-first execution, 32 experts: off by 3,060 in 340M).
    """
    equation = inputs[0].toIValue().replace(" ", "")
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    operands = equation.split("->")[0].split(",")
    if len(operands) != 2 or "." in equation:
        return einsum_flop_jit(inputs, outputs)
    sizes = {}
    for letters, shape in zip(operands, shapes, strict=True):
        sizes.update(zip(letters, shape, strict=True))
    return math.prod(sizes.values())


# What the paper counts: every conv (CondConv's grouped conv or bmm included), every
# linear layer (the routing FC included), every matmul (CondConv's kernel mixing) and
# einsum (the output mixing of CondConv's experts-first execution).
PAPER_HANDLES = {
    "aten::_convolution": conv_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": _einsum_madds,
}

# Ops the paper convention leaves out on purpose: normalisation (folded at inference),
# activations, pooling and element-wise arithmetic.
NOT_COUNTED = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::adaptive_avg_pool2d",
    "aten::avg_pool2d",
    "aten::max_pool2d",
    "aten::mean",
    "aten::relu",
    "aten::relu_",
    "aten::hardtanh",
    "aten::hardtanh_",
    "aten::silu",
    "aten::silu_",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::tanh",
    "aten::softmax",
    "aten::hardswish",
    "aten::hardswish_",
    "aten::hardsigmoid",
    "aten::gelu",
    "aten::add",
    "aten::add_",
    "aten::mul",
    "aten::mul_",
    "aten::sum",  # calibrated ReLU routing's per-example mass
    "aten::div",
    "aten::dropout",
    "aten::feature_dropout",
)


# Every routing activation is left out of the paper convention, so there a CondConv group's
# count does not depend on its routing, and the part cache leaves routing out of its keys.
assert {f"aten::{name}" for name in ROUTING_ACTIVATIONS} <= set(NOT_COUNTED)


@dataclass(frozen=True)
class GroupCount:
    """MADDs and parameters of one block group (numbered 1..N)."""

    index: int
    block: str  # the group's block string, e.g. ir_r3_k5_s2_e6_c160_se0.25_cc8_sigmoid
    madds: int
    params: int


@dataclass(frozen=True)
class MaddsReport:
    """Everything ``count_madds`` measured; ``convention`` says what ``madds`` includes."""

    model: str
    madds: int
    params: int
    convention: str
    resolution: int
    stem: int  # stem MADDs
    head: int  # head conv + classifier MADDs
    condconv_mixing: int  # kernel-mixing matmuls of all CondConv layers (part of madds)
    routing: int  # routing FCs of all CondConv blocks (part of madds)
    groups: list[GroupCount] = field(default_factory=list)
    skipped_ops: dict[str, int] = field(default_factory=dict)  # ops fvcore counted as zero

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_madds(
    spec_or_model: ArchSpec | nn.Module,
    resolution: int = 224,
    convention: str = "paper",
    in_channels: int = 3,
) -> MaddsReport:
    """Count the multiply-adds of one forward pass of one image.

    A spec is counted part by part (stem, each block group, head), each part traced by
    fvcore once per process (see :func:`madds_parts`); a module is traced whole.  Both give
    the same report.  ``in_channels`` is used only for plain modules; a spec's model knows
    its own.

    MADDs are always counted on the full model at the deployment resolution; the
    proxy task changes only how accuracy is estimated, never this count.
    """
    _check_arguments(resolution, convention)
    if isinstance(spec_or_model, ArchSpec):
        return _report_from_parts(spec_or_model, resolution, convention)
    model = spec_or_model
    if isinstance(model, CondConvNet):
        in_channels = model.spec.in_channels
    counted = _trace(model, (in_channels, resolution, resolution), convention)
    groups: list[GroupCount] = []
    stem = head = 0
    if isinstance(model, CondConvNet):
        by_module = counted["modules"]
        for i, group in enumerate(model.groups):
            groups.append(
                GroupCount(
                    index=i + 1,
                    block=model.spec.groups[i].to_string(),
                    madds=by_module.get(f"groups.{i}", 0),
                    params=sum(p.numel() for p in group.parameters()),
                )
            )
        stem, head = by_module.get("stem", 0), counted["head"]
    return MaddsReport(
        model=model.spec.name if isinstance(model, CondConvNet) else type(model).__name__,
        madds=counted["madds"],
        params=counted["params"],
        convention=convention,
        resolution=resolution,
        stem=stem,
        head=head,
        condconv_mixing=counted["mixing"],
        routing=counted["routing"],
        groups=groups,
        skipped_ops=counted["skipped"],
    )


def moe_equivalent_madds(
    spec: ArchSpec, resolution: int = 224, convention: str = "paper"
) -> int:
    """MADDs of the same network with every CondConv layer run as a mixture of experts.

    The mixture is what CondConv claims to match at a fraction of the cost: ``E`` separate
    convolutions on the layer's input, their outputs weighted by the same routing and summed
    (``E`` multiply-adds per output value), with no kernel mixing.  It is what
    ``CondConv2d(impl="experts")`` runs; the test checks this count against fvcore's trace
    of that execution and against a hand count.  Static layers count as they are.
    """
    _check_arguments(resolution, convention)
    return sum(entry["moe"] for _, entry in madds_parts(spec, resolution, convention))


def _check_arguments(resolution: int, convention: str) -> None:
    if convention not in CONVENTIONS:
        raise UserError(f"unknown MADD convention {convention!r}; use one of {CONVENTIONS}")
    at_least("resolution", resolution, 32)


# ---- the part cache ----------------------------------------------------------------------
#
# A network's count is the sum of its parts' (stem, block groups, tail = head conv, pooling,
# classifier), and a part's count depends only on its own description, its input shape
# and the convention.  Searches sample the same groups over and over (MnasNet-A1's space
# has 49 distinct groups in the paper convention), so each part is traced once per process
# and a candidate costs a few dictionary look-ups.  Keys and entries are plain JSON, so a
# study can store them (``madds_cache()``) and a later process or worker reuse them
# (``load_madds_cache``); every key carries ``_counter_version()``, so a stored entry never
# matches a count made by other code, fvcore or torch.

_PART_CACHE: dict[str, dict[str, Any]] = {}
_COUNTER_VERSION: list[str] = []  # computed once, on first use


def madds_parts(
    spec: ArchSpec, resolution: int = 224, convention: str = "paper"
) -> list[tuple[str, dict[str, Any]]]:
    """``(key, entry)`` for the stem, each block group and the tail of ``spec``'s model.

    An entry holds the part's fvcore counts: ``madds`` (all it counts), ``ops`` (per
    operator), ``mixing``, ``routing``, ``params``, ``skipped``, ``moe`` (its MADDs as a
    mixture of experts), ``output`` (the shape it hands on: the next part's input) and,
    for the tail, ``head`` (head conv + classifier, the report's ``head``).  Parts not in
    the cache are traced on CPU from one weightless build of the model.
    """
    model: CondConvNet | None = None
    shape = [spec.in_channels, resolution, resolution]
    parts: list[tuple[str, dict[str, Any]]] = []
    for index, config in enumerate(_part_configs(spec, convention)):
        key = json.dumps(
            {**config, "input": shape, "convention": convention, "counter": _counter_version()},
            sort_keys=True,
        )
        entry = _PART_CACHE.get(key)
        if entry is None:
            if model is None:
                with torch.device("meta"):  # weights are irrelevant to a count: skip their init
                    model = build_model(spec)
            entry = _count_part(model, index, shape, convention)
            _PART_CACHE[key] = entry
        parts.append((key, entry))
        shape = entry["output"]
    return parts


def madds_cache() -> dict[str, dict[str, Any]]:
    """A copy of this process's part counts, JSON-serialisable, for storing with a study."""
    return dict(_PART_CACHE)


def load_madds_cache(entries: dict[str, dict[str, Any]]) -> int:
    """Add stored part counts; those made by another counter version are ignored.

    Returns how many were taken.
    """
    version = f'"counter": "{_counter_version()}"'
    taken = {key: entry for key, entry in entries.items() if version in key}
    _PART_CACHE.update(taken)
    return len(taken)


def _counter_version() -> str:
    """fvcore's and torch's versions and the source of everything a part's count depends on."""
    if not _COUNTER_VERSION:
        from ccsearch.arch import blocks, builder
        from ccsearch.layers import cond_conv

        digest = hashlib.sha256(f"fvcore {_fvcore_version()} torch {torch.__version__}".encode())
        for module in (blocks, builder, cond_conv, sys.modules[__name__]):
            digest.update(inspect.getsource(module).encode())
        _COUNTER_VERSION.append(digest.hexdigest()[:16])
    return _COUNTER_VERSION[0]


def _fvcore_version() -> str:
    try:
        return importlib.metadata.version("fvcore")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _part_configs(spec: ArchSpec, convention: str) -> list[dict[str, Any]]:
    """What each part's count depends on (besides its input shape and the convention)."""
    act = spec.activation
    stem = (spec.stem_channels, spec.stem_kernel, spec.stem_stride, spec.stem_pool)
    configs: list[dict[str, Any]] = [{"part": "stem", "stem": stem, "activation": act}]
    for group in spec.groups:
        config = asdict(group)
        if not group.experts or convention == "paper":
            del config["routing"]  # no routing, or one that counts nothing
        configs.append({"part": "group", **config, "activation": act})
    tail = (spec.head_channels, spec.num_classes, bool(spec.dropout))
    configs.append({"part": "tail", "tail": tail, "activation": act})
    return configs


def _count_part(model: CondConvNet, index: int, shape: list[int], convention: str) -> dict:
    """Trace part ``index`` (0: stem, 1..N: block groups, N + 1: tail) of a meta-device model."""
    if index == 0:
        part: nn.Module = model.stem
    elif index <= len(model.groups):
        part = model.groups[index - 1]
    else:  # the model's own forward with its stem and groups emptied: head, pool, classifier
        part = model
        model.stem, model.groups = nn.Sequential(), nn.ModuleList()
    part.eval()
    with torch.no_grad():  # shapes only: nothing is computed on the meta device
        output = part(torch.empty(1, *shape, device="meta"))
    counted = _trace(part.to_empty(device="cpu"), tuple(shape), convention)
    counted["output"] = list(output.shape[1:])
    del counted["modules"]
    return counted


def _trace(module: nn.Module, shape: tuple[int, ...], convention: str) -> dict[str, Any]:
    """fvcore's counts of one forward of ``module`` on one zero image of ``shape``."""
    was_training = module.training
    threads = torch.get_num_threads()
    module.eval()
    # One image at batch 1 is tracing-bound; more threads only fight the training
    # workers that a search runs beside the count.
    torch.set_num_threads(1)
    try:
        analysis = _analysis(module, torch.zeros(1, *shape), convention)
        by_module = analysis.by_module()
        by_module_op = analysis.by_module_and_operator()
        skipped = dict(analysis.unsupported_ops())
    finally:
        torch.set_num_threads(threads)
        module.train(was_training)
    if convention == "paper" and skipped:
        raise RuntimeError(f"ops not covered by the paper MADD convention: {skipped}")

    total = int(by_module.get("", 0))
    mixing = routing = moe = 0
    for name, m in module.named_modules():
        ops = by_module_op.get(name, {})
        if isinstance(m, CondConv2d):
            mixing += ops.get("matmul", 0)
            # As E separate convs: E times the conv, E multiply-adds per output value to
            # sum them, no kernel mixing (m.weight.numel() = E x kernel size).
            conv = ops.get("conv", 0) + ops.get("bmm", 0)  # pointwise layers trace as bmm
            outputs = conv // math.prod(m.weight_shape[1:])
            moe += (m.num_experts - 1) * conv + m.num_experts * outputs - m.weight.numel()
        elif isinstance(m, Routing):
            routing += by_module.get(name, 0)
    head = by_module.get("head", 0) + by_module.get("classifier", 0)
    return {
        "madds": total,
        "ops": {op: int(n) for op, n in by_module_op.get("", {}).items() if n},
        "mixing": int(mixing),
        "routing": int(routing),
        "moe": total + int(moe),
        "params": sum(p.numel() for p in module.parameters()),
        "skipped": skipped,
        "head": int(head),
        "modules": {name: int(n) for name, n in by_module.items()},
    }


def _report_from_parts(spec: ArchSpec, resolution: int, convention: str) -> MaddsReport:
    stem, *groups, tail = (entry for _, entry in madds_parts(spec, resolution, convention))
    everything = [stem, *groups, tail]
    skipped: dict[str, int] = {}
    for entry in everything:
        for op, n in entry["skipped"].items():
            skipped[op] = skipped.get(op, 0) + n
    return MaddsReport(
        model=spec.name,
        madds=sum(e["madds"] for e in everything),
        params=sum(e["params"] for e in everything),
        convention=convention,
        resolution=resolution,
        stem=stem["madds"],
        head=tail["head"],
        condconv_mixing=sum(e["mixing"] for e in everything),
        routing=sum(e["routing"] for e in everything),
        groups=[
            GroupCount(i + 1, g.to_string(), e["madds"], e["params"])
            for i, (g, e) in enumerate(zip(spec.groups, groups, strict=True))
        ],
        skipped_ops=skipped,
    )


def _analysis(model: nn.Module, image: torch.Tensor, convention: str) -> FlopCountAnalysis:
    """A configured fvcore analysis; the paper convention replaces fvcore's handle table."""
    analysis = FlopCountAnalysis(model, image)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    if convention == "paper":
        analysis.clear_op_handles()  # start from an empty table: only what is listed counts
        analysis.set_op_handle(*[x for item in PAPER_HANDLES.items() for x in item])
        analysis.set_op_handle(*[x for op in NOT_COUNTED for x in (op, None)])
    return analysis


_UNITS = {"k": 3, "m": 6, "g": 9, "b": 9}  # powers of ten


def parse_madds(text: str | int | float) -> int:
    """Read a MADD budget: ``325M``, ``0.6G``, ``4.1e9``, ``325000000`` (also ``325k``).

    Decimal, not float, so ``325.44M`` is exactly 325440000; a fraction of a multiply-add is
    refused rather than rounded, since ``0.4`` is almost surely a missing unit.
    """
    raw = repr(text) if isinstance(text, float) else str(text).strip()
    exponent = 0
    if raw and raw[-1].lower() in _UNITS and not isinstance(text, int | float):
        exponent = _UNITS[raw[-1].lower()]
        raw = raw[:-1]
    try:
        value = Decimal(raw)
    except (InvalidOperation, ValueError):
        raise UserError(
            f"cannot read MADD count {text!r}: use e.g. 325M, 0.6G, 4.1e9 or 325000000"
        ) from None
    if not value.is_finite() or value <= 0 or value.adjusted() + exponent > 308:
        raise UserError(f"MADD count must be a positive number, got {text!r}")
    sign, digits, power = value.as_tuple()
    value = Decimal((sign, digits, power + exponent))  # exact: no context, no rounding
    if value != value.to_integral_value():
        hint = f"did you mean {raw}M or {raw}G?" if exponent == 0 else f"that is {value}"
        raise UserError(f"MADD count {text!r} is not a whole number of multiply-adds; {hint}")
    return int(value)


def exact_madds_label(n: int) -> str:
    """325440000 -> '325.44M': like ``format_madds`` but exact, so distinct budgets never
    share a label (run names are built from it)."""
    digits = str(abs(n))
    sign = "-" if n < 0 else ""
    for unit, exponent in (("G", 9), ("M", 6), ("K", 3)):
        if len(digits) > exponent:
            whole, fraction = digits[:-exponent], digits[-exponent:].rstrip("0")
            return f"{sign}{whole}{'.' + fraction if fraction else ''}{unit}"
    return str(n)


def format_madds(value: int | float) -> str:
    """325412345 -> '325.4M', 4089000000 -> '4.09G'."""
    if value >= 1e9:
        return f"{value / 1e9:.2f}G"
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}K"
    return str(int(value))
