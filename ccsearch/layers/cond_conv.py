"""CondConv: conditionally parameterized convolution (Yang et al., NeurIPS 2019).

A CondConv layer keeps ``E`` expert kernels ``W_1..W_E`` of the shape of the static
kernel it replaces.  Per example it computes routing weights
``r(x) = act(Linear(GAP(x)))``, mixes **one** kernel ``W(x) = sum_i r_i(x) W_i`` and
runs **one** convolution with it.  Because convolution is linear in its kernel this
equals the routing-weighted sum of ``E`` separate convolutions (a mixture of experts)
at roughly ``1/E`` of the cost: capacity grows with ``E``, multiply-adds only by the
mixing (``E * kernel size`` per example) and the routing layer.

Execution follows timm's ``CondConv2d``: experts are stored flat as ``[E, params]``;
one matmul ``[B, E] @ [E, params]`` mixes a kernel per example, then either one
grouped convolution runs the whole batch folded into channels (``groups = B * g``),
or, for pointwise kernels, one batched matmul over examples (faster there, see
``benchmarks/bench_condconv.py``).

On tiny feature maps (the late layers of a low-resolution proxy, 1x1 or 2x2) mixing a
kernel per example costs as much as running every expert, and the per-example
kernels are memory-bound; there, in eager mode, pointwise layers run the E experts
as one dense convolution and mix the outputs instead (the same result, by
linearity, several times faster on a CPU).  Traced and exported graphs (fvcore's
MADD count, ``torch.export``) always use the canonical mixed-kernel form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ROUTING_ACTIVATIONS = ("sigmoid", "softmax", "tanh", "relu")


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _explicit_padding(
    padding: int | tuple[int, int] | str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """``nn.Conv2d``'s padding as (h, w) pixels per side: ``"valid"`` is 0, ``"same"`` is
    half the kernel's reach (stride 1 and an odd reach only, which pad evenly)."""
    if not isinstance(padding, str):
        return _pair(padding)
    if padding == "valid":
        return (0, 0)
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    if stride != (1, 1):
        raise ValueError("padding='same' is not supported for strided convolutions")
    reach = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    if any(r % 2 for r in reach):
        raise ValueError(
            f"padding='same' with kernel {kernel} and dilation {dilation} pads unevenly, "
            "which CondConv2d does not support: give the padding explicitly"
        )
    return (reach[0] // 2, reach[1] // 2)


def tiny_map_crop(
    kernel: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int] | None:
    """Taps to crop from each side when a map is smaller than its padded kernel reach.

    On an ``H``-pixel map a kernel tap further than ``H - 1`` from the centre only ever
    meets zero padding, so a "same" kxk convolution on a 1x1 or 2x2 map equals a
    smaller one (exactly, any stride).  oneDNN is very slow on such tiny padded
    depthwise convolutions, which is where low-resolution proxies spend their time.
    Returns ``None`` when nothing can be cropped (always the case at 224px).
    """
    if dilation != (1, 1) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    crop = tuple(
        max(0, p - (n - 1)) if k == 2 * p + 1 else 0 for k, p, n in zip(kernel, padding, size, strict=True)
    )
    return crop if any(crop) else None  # type: ignore[return-value]


def conv2d_tiny_aware(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation, groups
) -> torch.Tensor:
    """``F.conv2d`` that first drops kernel taps which can only meet padding."""
    crop = tiny_map_crop(weight.shape[-2:], padding, dilation, x.shape[-2:])
    if crop is not None:
        ch, cw = crop
        weight = weight[..., ch : weight.shape[-2] - ch, cw : weight.shape[-1] - cw]
        padding = (padding[0] - ch, padding[1] - cw)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding) with the tiny-map kernel crop of :func:`tiny_map_crop`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_tiny_aware(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class Routing(nn.Module):
    """``r(x) = act(Linear(Dropout(GAP(x))))``: one weight per expert and example.

    One ``Routing`` may feed several CondConv layers (every conv of an MBConv block
    shares its block's routing, as in the paper).  ``last_weights`` keeps the most
    recent ``[B, E]`` routing weights (detached) for the routing-sparsity analysis.

    The linear layer starts as in timm (weights uniform in +-1/sqrt(in + E)) with the
    bias at ``bias_init``: 0 is the paper's (TF) and timm's init, for every activation.
    ``bias_init=1.0`` is the "switched-on" start: with ReLU no expert starts off for any
    example (every weight near 1, so the router starts nearly linear), not the paper's.
    """

    def __init__(
        self,
        in_channels: int,
        num_experts: int,
        activation: str = "sigmoid",
        dropout: float = 0.0,
        bias_init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if activation not in ROUTING_ACTIVATIONS:
            raise ValueError(
                f"routing activation {activation!r} is not one of {ROUTING_ACTIVATIONS}"
            )
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.activation = activation
        self.bias_init = bias_init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_experts, device=device, dtype=dtype)
        self.reset_parameters()
        self.last_weights: torch.Tensor | None = None

    def reset_parameters(self) -> None:
        """timm's routing init (``_init_weight_goog``), bias at ``bias_init``."""
        bound = 1 / math.sqrt(self.fc.in_features + self.fc.out_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.constant_(self.fc.bias, self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, C]: global average pool
        logits = self.fc(self.dropout(pooled))  # [B, E]
        if self.activation == "sigmoid":
            weights = torch.sigmoid(logits)
        elif self.activation == "softmax":
            weights = torch.softmax(logits, dim=1)
        elif self.activation == "tanh":
            weights = torch.tanh(logits)
        else:
            weights = torch.relu(logits)
        if not torch.compiler.is_compiling():  # export/compile forbid new attributes
            self.last_weights = weights.detach()
        return weights


class CondConv2d(nn.Module):
    """Drop-in replacement for ``nn.Conv2d`` with ``num_experts`` expert kernels.

    With ``routing`` set (an activation name) the layer owns its routing function
    and ``forward(x)`` works like ``nn.Conv2d``.  With ``routing=None`` the caller
    passes the routing weights, ``forward(x, routing_weights)``, so that several
    layers can share one :class:`Routing`.

    It takes ``nn.Conv2d``'s arguments: ``padding`` may also be ``"same"`` (odd kernel
    reach, stride 1: an even one pads unevenly and is refused) or ``"valid"``, and
    ``padding_mode`` any of ``PADDING_MODES`` (non-zero modes pad the input first).

    ``impl`` picks the execution: ``"conv"`` (grouped convolution over the batch),
    ``"bmm"`` (batched matmul, pointwise ungrouped kernels only), ``"experts"`` (every
    expert's output, then mixed) or ``"auto"`` (pointwise: ``experts`` on maps of at
    most ``EXPERTS_FIRST_MAX_PIXELS`` output pixels in eager mode, else ``bmm``; other
    kernels: ``conv``).  All give the same result.
    """

    EXPERTS_FIRST_MAX_PIXELS = 4  # measured crossover on CPU (benchmarks/bench_condconv.py)
    PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        num_experts: int = 8,
        routing: str | None = "sigmoid",
        routing_dropout: float = 0.0,
        impl: str = "auto",
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} "
                f"must be divisible by groups {groups}"
            )
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if impl not in ("auto", "conv", "bmm", "experts"):
            raise ValueError(f"impl must be 'auto', 'conv', 'bmm' or 'experts', got {impl!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        if padding_mode not in self.PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {self.PADDING_MODES}, got {padding_mode!r}"
            )
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        self.padding = _explicit_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.padding_mode = padding_mode
        self.groups = groups
        self.num_experts = num_experts
        self.pointwise = self.kernel_size == (1, 1) and self.padding == (0, 0) and groups == 1
        if impl == "bmm" and not self.pointwise:
            raise ValueError("impl='bmm' needs a 1x1 kernel, no padding and groups=1")
        self.impl = impl

        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        # Experts stored flat so that one matmul mixes them: [E, out * in/g * kh * kw].
        factory = {"device": device, "dtype": dtype}
        size = math.prod(self.weight_shape)
        self.weight = nn.Parameter(torch.empty(num_experts, size, **factory))
        self.bias = nn.Parameter(torch.empty(num_experts, out_channels, **factory)) if bias else None
        self.routing = (
            Routing(in_channels, num_experts, routing, routing_dropout, **factory)
            if routing
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every expert like a standalone ``nn.Conv2d`` of the same shape."""
        for e in range(self.num_experts):
            expert = self.weight.data[e].view(self.weight_shape)
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = math.prod(self.weight_shape[1:])
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor | None = None) -> torch.Tensor:
        if routing_weights is None:
            assert self.routing is not None, "routing=None: pass routing_weights to forward"
            routing_weights = self.routing(x)
        padding = self.padding
        if self.padding_mode != "zeros" and padding != (0, 0):
            ph, pw = padding
            x, padding = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)
        impl = self._choose_impl(x)
        if impl == "experts":
            return self._forward_experts_first(x, routing_weights, padding)
        b, c, h, w = x.shape
        kernels = routing_weights @ self.weight  # [B, E] @ [E, P] -> [B, P]: one kernel per example
        bias = routing_weights @ self.bias if self.bias is not None else None  # [B, out]
        if impl == "bmm":
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
                h, w = x.shape[2], x.shape[3]
            kernels = kernels.view(b, self.out_channels, c)  # [B, out, in]
            out = torch.bmm(kernels, x.reshape(b, c, h * w))  # [B, out, H*W]
            out = out.view(b, self.out_channels, h, w)
            return out if bias is None else out + bias.view(b, self.out_channels, 1, 1)
        kernels = kernels.view(
            b * self.out_channels, *self.weight_shape[1:]
        )  # [B*out, in/g, kh, kw]
        out = conv2d_tiny_aware(
            x.reshape(1, b * c, h, w),  # the batch folded into channels
            kernels,
            bias.reshape(-1) if bias is not None else None,
            self.stride,
            padding,
            self.dilation,
            groups=b * self.groups,
        )  # [1, B*out, H', W']
        return out.view(b, self.out_channels, out.shape[-2], out.shape[-1])

    def _choose_impl(self, x: torch.Tensor) -> str:
        if self.impl != "auto":
            return self.impl
        if not self.pointwise:
            return "conv"
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        pixels = -(-x.shape[2] // self.stride[0]) * -(-x.shape[3] // self.stride[1])
        return "experts" if not tracing and pixels <= self.EXPERTS_FIRST_MAX_PIXELS else "bmm"

    def _forward_experts_first(
        self, x: torch.Tensor, routing_weights: torch.Tensor, padding: tuple[int, int]
    ) -> torch.Tensor:
        """Run all E experts as one convolution, then mix their outputs per example."""
        b, e, g = x.shape[0], self.num_experts, self.groups
        out_g = self.out_channels // g
        # Group-major stacking so a grouped conv sees each group's E*out/g kernels together.
        weight = self.weight.view(e, g, out_g, *self.weight_shape[1:]).transpose(0, 1)
        weight = weight.reshape(g * e * out_g, *self.weight_shape[1:])  # [g*E*out/g, in/g, kh, kw]
        y = conv2d_tiny_aware(x, weight, None, self.stride, padding, self.dilation, g)
        y = y.view(b, g, e, out_g, y.shape[-2], y.shape[-1])  # [B, g, E, out/g, H', W']
        out = torch.einsum("be,bgeohw->bgohw", routing_weights, y)
        out = out.reshape(b, self.out_channels, y.shape[-2], y.shape[-1])
        if self.bias is not None:
            out = out + (routing_weights @ self.bias).view(b, self.out_channels, 1, 1)
        return out

    def expert_kernels(self) -> torch.Tensor:
        """The experts as ``[E, out, in/g, kh, kw]`` (for references and analysis)."""
        return self.weight.view(self.num_experts, *self.weight_shape)

    def extra_repr(self) -> str:
        mode = f"padding_mode={self.padding_mode!r}, " if self.padding_mode != "zeros" else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, {mode}"
            f"num_experts={self.num_experts}, impl={self.impl!r}"
        )
