"""Multiply-add counting with fvcore, in the paper's convention or fvcore's.

One multiply-add counts once (fvcore's unit).  The **paper** convention counts
convolutions, linear layers and, for CondConv, the kernel-mixing matmul and the
routing FC; batch norm (folded into convolutions at inference), activations,
pooling and element-wise ops are not counted.  The **fvcore** convention is
fvcore's default table, which also counts batch norm and adaptive pooling (~+4%).

fvcore skips ops it has no handle for and counts them as zero.  In the paper
convention every op a model runs must be either counted or listed in
``NOT_COUNTED`` on purpose; anything else raises, so nothing is silently missed.
"""

from __future__ import annotations

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
    linear_flop_jit,
    matmul_flop_jit,
)
from torch import nn

from ccsearch.arch import ArchSpec, CondConvNet, build_model
from ccsearch.errors import UserError
from ccsearch.layers import CondConv2d, Routing

CONVENTIONS = ("paper", "fvcore")

# What the paper counts: every conv (CondConv's grouped conv or bmm included), every
# linear layer (the routing FC included) and every matmul (CondConv's kernel mixing).
PAPER_HANDLES = {
    "aten::_convolution": conv_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
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
    "aten::dropout",
    "aten::feature_dropout",
)


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

    ``in_channels`` is used only for plain modules; a spec's model knows its own.

    MADDs are always counted on the full model at the deployment resolution; the
    proxy task changes only how accuracy is estimated, never this count.
    """
    if convention not in CONVENTIONS:
        raise UserError(f"unknown MADD convention {convention!r}; use one of {CONVENTIONS}")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 32:
        raise UserError(f"resolution must be an integer >= 32, got {resolution!r}")
    if isinstance(spec_or_model, ArchSpec):
        with torch.device("meta"):  # weights are irrelevant to a count: skip their init
            model = build_model(spec_or_model)
        model = model.to_empty(device="cpu")
    else:
        model = spec_or_model
    name = model.spec.name if isinstance(model, CondConvNet) else type(model).__name__
    in_channels = model.spec.in_channels if isinstance(model, CondConvNet) else in_channels
    image = torch.zeros(1, in_channels, resolution, resolution)

    was_training = model.training
    threads = torch.get_num_threads()
    model.eval()
    # One image at batch 1 is tracing-bound; more threads only fight the training
    # workers that a search runs beside the count.
    torch.set_num_threads(1)
    try:
        analysis = _analysis(model, image, convention)
        by_module = analysis.by_module()
        by_module_op = analysis.by_module_and_operator()
        total = analysis.total()
        skipped = dict(analysis.unsupported_ops())
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    if convention == "paper" and skipped:
        raise RuntimeError(f"ops not covered by the paper MADD convention: {skipped}")

    mixing = routing = 0
    for module_name, module in model.named_modules():
        if isinstance(module, CondConv2d):
            mixing += by_module_op.get(module_name, {}).get("matmul", 0)
        elif isinstance(module, Routing):
            routing += by_module.get(module_name, 0)

    groups: list[GroupCount] = []
    stem = head = 0
    if isinstance(model, CondConvNet):
        for i, group in enumerate(model.groups):
            groups.append(
                GroupCount(
                    index=i + 1,
                    block=model.spec.groups[i].to_string(),
                    madds=by_module.get(f"groups.{i}", 0),
                    params=sum(p.numel() for p in group.parameters()),
                )
            )
        stem = by_module.get("stem", 0)
        head = by_module.get("head", 0) + by_module.get("classifier", 0)
    return MaddsReport(
        model=name,
        madds=int(total),
        params=sum(p.numel() for p in model.parameters()),
        convention=convention,
        resolution=resolution,
        stem=int(stem),
        head=int(head),
        condconv_mixing=int(mixing),
        routing=int(routing),
        groups=groups,
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
