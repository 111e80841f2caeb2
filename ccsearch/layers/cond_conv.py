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
linearity, several times faster on a CPU), and depthwise layers run as a few
per-channel scalings, one per kernel tap that meets the image (on one thread ATen
would run their folded convolution as a loop over all ``B * C`` groups).  Kernel taps
that can only meet zero padding are dropped before mixing.  Traced and exported graphs
(fvcore's MADD count, ``torch.export``) always use the canonical mixed-kernel form.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

ROUTING_ACTIVATIONS = ("sigmoid", "softmax", "tanh", "relu")


# Inference chunk per layer shape, layout, dtype, device and thread count, measured once
# per process (``CondConv2d._in_measured_chunks``).
_MEASURED_CHUNKS: dict[tuple, int] = {}


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
    if dilation != (1, 1) or canonical_form():
        return None
    crop = tuple(
        max(0, p - (n - 1)) if k == 2 * p + 1 else 0 for k, p, n in zip(kernel, padding, size, strict=True)
    )
    return crop if any(crop) else None  # type: ignore[return-value]


def crop_to_image(
    kernels: torch.Tensor, padding: tuple[int, int], dilation: tuple[int, int], size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[..., kh, kw]`` kernels without the taps :func:`tiny_map_crop` drops on a map of
    ``size``, and the padding left; unchanged where nothing can be cropped."""
    crop = tiny_map_crop(kernels.shape[-2:], padding, dilation, size)
    if crop is None:
        return kernels, padding
    (ch, cw), (kh, kw) = crop, kernels.shape[-2:]
    return kernels[..., ch : kh - ch, cw : kw - cw], (padding[0] - ch, padding[1] - cw)


def canonical_form() -> bool:
    """Whether a graph is being recorded (fvcore's trace, ``torch.export``, ``torch.compile``):
    then every layer runs its canonical form, whatever is fastest in eager mode."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.4
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or exporting()


MIX_SPLIT_MIN_PARAMS = 16384  # one example's kernel this large is mixed on every thread


def mix_experts(routing_weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Every example's kernel, ``[B, E] @ [E, P]``.

    ATen runs a product with one row (batch 1, inference) on one thread, and the layer's
    product then reads a kernel that thread wrote.  So on a CPU with several threads one
    example's large kernel is mixed as one column block of the experts per thread, a batched
    matmul of ``[1, E] @ [E, P/T]`` blocks: at batch 1 with 2 threads a 1x1 160->960 layer
    (7 px) went from 362 to 158 us, mixing and product (benchmarks/README.md), with a
    bitwise-equal kernel on the machine measured.  Traced and exported graphs keep the
    plain product.
    """
    if canonical_form():  # first: a traced graph must not bake this example count in
        return routing_weights @ experts
    b, e = routing_weights.shape
    p, threads = experts.shape[1], torch.get_num_threads()
    if b != 1 or threads == 1 or p < MIX_SPLIT_MIN_PARAMS or p % threads \
            or experts.device.type != "cpu":
        return routing_weights @ experts
    blocks = experts.reshape(e, threads, p // threads).transpose(0, 1)  # [T, E, P/T]
    return torch.bmm(routing_weights.expand(threads, 1, e), blocks).view(1, p)


def _tap_reach(start: int, stride: int, outputs: int, size: int) -> tuple[bool, bool]:
    """For a kernel tap reading input ``start + stride * i`` for output ``i``: whether it ever
    meets the image, and whether it always does (then it needs no padding)."""
    last = start + stride * (outputs - 1)
    first_inside = start if start >= 0 else start % stride  # the first index >= 0
    return first_inside <= min(last, size - 1), start >= 0 and last <= size - 1


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` lies in channels-last memory.  A map that is both (1x1, or one channel)
    counts as NCHW: any output of that shape is both too."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _rows_as_map(rows: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, H*W, C]`` as ``[B, C, H, W]``: a view, channels-last memory for contiguous rows."""
    b, _, c = rows.shape
    return rows.view(b, h, w, c).permute(0, 3, 1, 2)


def _pixels_as_rows(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as ``[B, H*W, C]``: a view for NCHW and for channels-last input."""
    b, c, h, w = x.shape
    if x.is_contiguous():
        return x.reshape(b, c, h * w).transpose(1, 2)
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def conv2d_tiny_aware(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation, groups
) -> torch.Tensor:
    """``F.conv2d`` that first drops kernel taps which can only meet padding, and in eager
    mode runs pointwise and depthwise kernels on 1-pixel outputs without oneDNN.

    Why: on the late layers of a low-resolution proxy (1x1 maps, batch 64) oneDNN spends
    0.3-2 ms on a convolution that is a matmul (pointwise) or a per-channel scaling
    (depthwise), most of a smoke trial's time.  A matmul or a few elementwise ops give the
    same result; traced and exported graphs keep the convolution.
    """
    weight, padding = crop_to_image(weight, padding, dilation, x.shape[-2:])
    if not canonical_form():
        b, c, h, w = x.shape
        o, kernel = weight.shape[0], tuple(weight.shape[-2:])
        ho, wo = conv_output_size((h, w), kernel, stride, padding, dilation)
        if ho * wo == 1 and kernel == (1, 1) and padding == (0, 0) and groups == 1:
            pixel = x[:, :, :1, :1].reshape(b, c)  # the one pixel a 1x1 kernel reads
            return F.linear(pixel, weight.view(o, c), bias).view(b, o, 1, 1)
        if ho * wo <= TAPS_MAX_PIXELS and groups == c == o and weight.shape[1] == 1:
            taps = TapPlan((h, w), kernel, stride, padding, dilation)
            out = taps.apply(x, taps.select(weight.view(1, c, *kernel)))
            return out if bias is None else out + bias.view(1, c, 1, 1)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv_output_size(size, kernel, stride, padding, dilation) -> tuple[int, int]:
    dims = zip(size, padding, dilation, kernel, stride, strict=True)
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in dims)  # type: ignore[return-value]


TAPS_MAX_PIXELS = 1  # depthwise layers run as per-channel scalings on outputs this small


class TapPlan:
    """A depthwise convolution as a sum of per-channel scalings, one per kernel tap that
    meets the image: elementwise ops only, so the cost does not hang on which convolution
    backend ATen picks (on one thread it runs a folded depthwise conv with a 1x1 kernel
    and batch 1 as a loop over all ``B * C`` groups).  Elementwise ops keep the input's
    layout, so the output has it too.  ``select`` cuts the taps used out of a kernel (or
    out of stacked experts, before they are mixed: less to mix)."""

    def __init__(self, size, kernel, stride, padding, dilation):
        (h, w), (kh, kw), (sh, sw), (dh, dw) = size, kernel, stride, dilation
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.out = conv_output_size(size, kernel, stride, padding, dilation)
        self.reach_h = [_tap_reach(u * dh - padding[0], sh, self.out[0], h) for u in range(kh)]
        self.reach_w = [_tap_reach(v * dw - padding[1], sw, self.out[1], w) for v in range(kw)]
        rows = [u for u, (meets, _) in enumerate(self.reach_h) if meets]
        cols = [v for v, (meets, _) in enumerate(self.reach_w) if meets]
        self.meets_image = bool(rows and cols)
        self.rows = range(rows[0], rows[-1] + 1) if rows else range(0)
        self.cols = range(cols[0], cols[-1] + 1) if cols else range(0)

    def select(self, kernels: torch.Tensor) -> torch.Tensor:
        """``[..., kh, kw]`` kernels -> ``[..., R, S]``: only the taps that meet the image."""
        r, s = self.rows, self.cols
        return kernels[..., r.start : r.stop, s.start : s.stop]

    def apply(self, x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, H, W] convolved with ``kernels`` [N, C, R, S] of the selected taps,
        one per example (N = B) or one for all (N = 1)."""
        b, c = x.shape[:2]
        (ho, wo), (sh, sw), (dh, dw), (ph, pw) = self.out, self.stride, self.dilation, self.padding
        if not self.meets_image:  # every tap meets only padding
            layout = torch.channels_last if _channels_last(x) else torch.contiguous_format
            zeros = torch.zeros(b, c, ho, wo, dtype=x.dtype, device=x.device, memory_format=layout)
            return zeros + 0 * kernels.sum()  # keeps the kernels in the graph
        kernels = kernels.reshape(*kernels.shape, 1, 1)  # [N, C, R, S, 1, 1]
        padded, out = None, None
        for i, u in enumerate(self.rows):
            for j, v in enumerate(self.cols):
                top, left = u * dh - ph, v * dw - pw
                source = x
                if not (self.reach_h[u][1] and self.reach_w[v][1]):  # reads some padding
                    if padded is None:
                        padded = F.pad(x, (pw, pw, ph, ph))
                    source, top, left = padded, top + ph, left + pw
                bottom, right = top + sh * (ho - 1) + 1, left + sw * (wo - 1) + 1
                term = source[:, :, top:bottom:sh, left:right:sw] * kernels[:, :, i, j]
                out = term if out is None else out + term
        return out


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding) run by :func:`conv2d_tiny_aware`: the tiny-map kernel
    crop, and in eager mode a matmul or per-channel scalings on 1-pixel outputs."""

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

    ``calibrated=True`` starts every activation where sigmoid starts, so that a short
    proxy ranks layouts by capacity rather than by how fast their routing wakes up
    (benchmarks/README.md, "The cause, and a calibrated routing").  A block's pooled
    input is centred, so raw routing starts at the bias: sigmoid gives each example one
    shared kernel of mass E/2, while tanh and ReLU (0 at 0) give near-zero kernels and
    are 2-4x steeper.  Calibrated, the logits are ``bias + W x / 4`` (sigmoid's slope at
    0, a temperature of 4 for softmax), the bias starts where the activation is 1/2
    (``atanh(1/2)`` for tanh, 1/2 for ReLU), softmax is scaled to mass E/2 and ReLU is
    normalised per example to mass E/2.  Sigmoid is the same function either way.

    ``blend`` (a float, 1 unless a trainer sets it) pulls every weight towards 1/2, where
    sigmoid and calibrated routing start: ``1/2 + blend * (r - 1/2)``.  At 0 every example
    gets one kernel, the experts' sum / 2.  A proxy's ``routing_warmup`` ramps it from 0 to
    1, because per-example kernels early in a short training make CondConv-heavy layouts
    stall (benchmarks/README.md, "Another machine, and a routing warm-up"); at 1 it is
    not applied at all.
    """

    CALIBRATED_BIAS = {"softmax": 0.0, "tanh": math.atanh(0.5), "relu": 0.5}
    SLOPE = 0.25  # sigmoid's slope at 0: calibrated logits are bias + SLOPE * W x
    START = 0.5  # every weight where sigmoid (and calibrated routing) starts: see ``blend``
    RELU_EPS = 1e-6  # keeps a ReLU router whose every expert is off at zero weights

    def __init__(
        self,
        in_channels: int,
        num_experts: int,
        activation: str = "sigmoid",
        dropout: float = 0.0,
        bias_init: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        calibrated: bool = False,
    ):
        super().__init__()
        if activation not in ROUTING_ACTIVATIONS:
            raise ValueError(
                f"routing activation {activation!r} is not one of {ROUTING_ACTIVATIONS}"
            )
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.activation = activation
        # Sigmoid already starts calibrated: it stays exactly the paper's function.
        self.calibrated = calibrated and activation != "sigmoid"
        if bias_init is None:
            bias_init = self.CALIBRATED_BIAS[activation] if self.calibrated else 0.0
        self.bias_init = bias_init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_experts, device=device, dtype=dtype)
        self.reset_parameters()
        self.blend = 1.0
        self.last_weights: torch.Tensor | None = None

    def reset_parameters(self) -> None:
        """timm's routing init (``_init_weight_goog``), bias at ``bias_init``."""
        bound = 1 / math.sqrt(self.fc.in_features + self.fc.out_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.constant_(self.fc.bias, self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(F.adaptive_avg_pool2d(x, 1).flatten(1))  # [B, C]: GAP
        if self.calibrated:
            pooled = pooled * self.SLOPE  # before the linear layer: it stays one aten::linear
        logits = self.fc(pooled)  # [B, E]
        half_mass = self.fc.out_features / 2
        if self.activation == "sigmoid":
            weights = torch.sigmoid(logits)
        elif self.activation == "softmax":
            weights = torch.softmax(logits, dim=1)
            if self.calibrated:
                weights = weights * half_mass
        elif self.activation == "tanh":
            weights = torch.tanh(logits)
        else:
            weights = torch.relu(logits)
            if self.calibrated:
                mass = weights.sum(dim=1, keepdim=True) + self.RELU_EPS
                weights = weights / mass * half_mass
        if self.blend != 1:
            weights = self.START + self.blend * (weights - self.START)
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
    expert's output, then mixed), ``"taps"`` (depthwise only: one per-channel scaling per
    kernel tap) or ``"auto"``: in eager mode, pointwise layers run ``experts`` on output
    maps of at most ``EXPERTS_FIRST_MAX_PIXELS`` pixels when they have many input channels
    (see ``_choose_impl``), else ``bmm``; depthwise layers run ``taps`` on output maps of
    at most ``TAPS_MAX_PIXELS`` pixels; the rest ``conv``.  Traced and exported graphs get
    ``bmm`` (pointwise) or ``conv``.  Without autograd (inference), ``bmm`` and ``conv`` on
    small maps mix and apply kernels ``INFERENCE_CHUNK`` examples at a time (in inference
    mode: or the whole batch at once, whichever this process measured faster for the
    shape).  All give the same result, in the input's memory format (channels-last in,
    channels-last out, so that the layers after it keep the layout the trainer chose on
    CUDA), except the pointwise pixels-as-rows products, whose output is channels-last
    memory also for NCHW input (see ``_forward_experts_pointwise``).
    """

    # Measured crossovers on CPU (benchmarks/bench_condconv.py).
    EXPERTS_FIRST_MAX_PIXELS = 4
    EXPERTS_FIRST_IN_PER_OUTPUT = 1.5  # ... and in_channels > this x experts x output pixels
    TAPS_MAX_PIXELS = TAPS_MAX_PIXELS
    BMM_PIXELS_AS_ROWS = 4  # eager bmm puts pixels on the rows of its product up to here
    INFERENCE_CHUNK = 8  # without autograd, mix and apply kernels 8 examples at a time
    MEASURED_CHUNKS = (8, 16)  # ... in inference mode: these or the whole batch, measured
    INFERENCE_CHUNK_MAX_MAP = 65536  # ... in a grouped conv, if an example's input is this small
    PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
    IMPLS = ("auto", "conv", "bmm", "experts", "taps")

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
        calibrated_routing: bool = False,
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
        if impl not in self.IMPLS:
            raise ValueError(
                f"impl must be 'auto', 'conv', 'bmm', 'experts' or 'taps', got {impl!r}"
            )
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
        self.depthwise = groups == in_channels == out_channels
        if impl == "bmm" and not self.pointwise:
            raise ValueError("impl='bmm' needs a 1x1 kernel, no padding and groups=1")
        if impl == "taps" and not self.depthwise:
            raise ValueError("impl='taps' needs a depthwise layer (groups = in = out channels)")
        self.impl = impl

        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        # Experts stored flat so that one matmul mixes them: [E, out * in/g * kh * kw].
        factory = {"device": device, "dtype": dtype}
        size = math.prod(self.weight_shape)
        self.weight = nn.Parameter(torch.empty(num_experts, size, **factory))
        self.bias = nn.Parameter(torch.empty(num_experts, out_channels, **factory)) if bias else None
        self.routing = (
            Routing(in_channels, num_experts, routing, routing_dropout, **factory,
                    calibrated=calibrated_routing)
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
            channels_last = _channels_last(x)
            x, padding = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)
            if channels_last:  # circular padding returns NCHW
                x = x.contiguous(memory_format=torch.channels_last)
        impl = self._choose_impl(x, padding)
        if impl == "experts":
            return self._forward_experts_first(x, routing_weights, padding)
        if impl == "taps":
            return self._forward_taps(x, routing_weights, padding)
        b, c, h, w = x.shape
        bias = routing_weights @ self.bias if self.bias is not None else None  # [B, out]
        if impl == "bmm":
            out = self._forward_bmm(x, routing_weights)
            return out if bias is None else out + bias.view(b, self.out_channels, 1, 1)
        # Drop the taps that can only meet padding before mixing, not after: less to mix.
        experts, padding = self._cropped_experts(padding, (h, w))  # [E, out, in/g, kh', kw']
        shape = experts.shape[1:]  # the kernel each example gets
        experts = experts.reshape(self.num_experts, -1)  # [E, P']
        n = self.INFERENCE_CHUNK
        small_maps = c * h * w <= self.INFERENCE_CHUNK_MAX_MAP
        layout = torch.channels_last if _channels_last(x) else torch.contiguous_format

        def whole() -> torch.Tensor:
            out = self._folded_conv(x, mix_experts(routing_weights, experts), shape, bias, padding)
            return out.contiguous(memory_format=layout)  # see _folded_conv

        def chunked(n: int) -> torch.Tensor:
            # Inference on small maps: a few examples at a time, whose maps may stay in
            # cache.  Each chunk is copied once, into the output in the input's layout.
            out = None
            for i in range(0, b, n):
                chunk = self._folded_conv(
                    x[i : i + n],
                    routing_weights[i : i + n] @ experts,
                    shape,
                    bias[i : i + n] if bias is not None else None,
                    padding,
                )
                if out is None:
                    out = chunk.new_empty(b, *chunk.shape[1:]).contiguous(memory_format=layout)
                out[i : i + n] = chunk
            return out

        if canonical_form() or torch.is_grad_enabled() or b <= n or not small_maps:
            return whole()
        key = ("conv", x.shape, layout, shape, padding, self.stride, self.dilation, x.dtype,
               x.device)
        return self._in_measured_chunks(key, b, whole, chunked)

    def _folded_conv(
        self,
        x: torch.Tensor,
        kernels: torch.Tensor,
        shape: torch.Size,
        bias: torch.Tensor | None,
        padding: tuple[int, int],
    ) -> torch.Tensor:
        """One grouped convolution over the batch folded into channels (``groups = B * g``):
        ``kernels`` is ``[B, P]``, one kernel of ``shape`` (``[out, in/g, kh, kw]``) each.

        Runs and returns NCHW: folding the batch into channels needs ``[B*C, H, W]`` (or
        ``[H, W, B*C]``), which channels-last memory ``[B, H, W, C]`` is not, so channels-last
        input is copied once here and the caller copies the output back (the next layer
        would otherwise convert it, and the layers between run NCHW).  One example needs
        no folding: its conv runs in the input's layout (a channels-last depthwise layer at
        batch 1 then runs oneDNN's NHWC kernel, not two copies around an NCHW one).
        """
        b, c, h, w = x.shape
        if not canonical_form() and b == 1:  # a traced graph keeps the fold: any batch
            bias = bias.view(-1) if bias is not None else None
            return F.conv2d(x, kernels.view(shape), bias, self.stride, padding, self.dilation,
                            self.groups)
        out = F.conv2d(
            x.reshape(1, b * c, h, w),
            kernels.view(b * shape[0], *shape[1:]),  # [B*out, in/g, kh, kw]
            bias.reshape(-1) if bias is not None else None,
            self.stride,
            padding,
            self.dilation,
            groups=b * self.groups,
        )  # [1, B*out, H', W']
        return out.view(b, self.out_channels, out.shape[-2], out.shape[-1])

    def _forward_bmm(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """Pointwise: mix a kernel per example, then one batched matmul over examples.

        The product reads the input as it lies, without a copy (a strided layer copies its
        subsampled input once): NCHW input as columns, ``kernel @ [in, H*W]``, writing NCHW;
        channels-last input as rows, ``[H*W, in] @ kernel^T``, writing channels-last.  On
        maps of at most ``BMM_PIXELS_AS_ROWS`` pixels NCHW input runs rows too (BLAS is slow
        on 4-column products) and its output stays channels-last memory: copying it to NCHW
        measured slower (``_forward_experts_pointwise`` says why).
        """
        channels_last = _channels_last(x)
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        b, c, h, w = x.shape
        o, n = self.out_channels, self.INFERENCE_CHUNK
        few_pixels = not canonical_form() and h * w <= self.BMM_PIXELS_AS_ROWS
        if channels_last or few_pixels:
            data, rows = _pixels_as_rows(x), True  # [B, H*W, in]
        else:
            data, rows = x.reshape(b, c, h * w), False  # [B, in, H*W]

        def product(kernels: torch.Tensor, data: torch.Tensor, out=None) -> torch.Tensor:
            if rows:  # kernels: [B, out, in]
                return torch.bmm(data, kernels.transpose(1, 2), out=out)  # [B, H*W, out]
            return torch.bmm(kernels, data, out=out)  # [B, out, H*W]

        if rows and not canonical_form() and torch.is_grad_enabled() and b > 2 * self.num_experts:
            # Mix the kernels transposed, [B, in, out], as the product reads them: else the
            # backward copies their [B, P] gradient; this copies the [E, P] experts twice.
            experts = self.weight.view(-1, o, c).transpose(1, 2).reshape(-1, c * o)
            kernels = (routing_weights @ experts).view(b, c, o).transpose(1, 2)
            out = product(kernels, data)
        else:
            def whole() -> torch.Tensor:
                kernels = mix_experts(routing_weights, self.weight).view(b, o, c)  # [B, E] @ [E, P]
                return product(kernels, data)

            def chunked(n: int) -> torch.Tensor:  # a few examples' kernels at a time
                out = data.new_empty(b, h * w, o) if rows else data.new_empty(b, o, h * w)
                for i in range(0, b, n):
                    kernels = (routing_weights[i : i + n] @ self.weight).view(-1, o, c)
                    product(kernels, data[i : i + n], out=out[i : i + n])
                return out

            if canonical_form() or torch.is_grad_enabled() or b <= n or few_pixels:
                out = whole()
            else:
                key = ("bmm", data.shape, data.stride(), rows, self.weight.shape, x.dtype,
                       x.device)
                out = self._in_measured_chunks(key, b, whole, chunked)
        return _rows_as_map(out, h, w) if rows else out.view(b, o, h, w)

    def _in_measured_chunks(self, key: tuple, b: int, whole, chunked) -> torch.Tensor:
        """In ``torch.inference_mode``: the batch at once or ``MEASURED_CHUNKS`` examples at
        a time, whichever ran faster the first time this process met ``key`` (with its
        thread count).  Which is faster depends on the CPU's caches: chunks of 8 took a
        depthwise 5x5 layer, 960 channels, 7 px, batch 64, from 5.1 to 2.0 ms on an AMD
        EPYC (1 MB of L2 per core), and made the same layer up to 1.7x slower on an Intel
        Xeon (2 MB of L2, 480 MB of L3; benchmarks/README.md).  The two may differ in the
        last bits (oneDNN picks its algorithm by problem size), so a trainer's evaluation
        (``no_grad``, not inference mode) always runs chunks: its top-1 never depends on a
        timing."""
        if not torch.is_inference_mode_enabled():
            return chunked(self.INFERENCE_CHUNK)

        def run(n: int) -> torch.Tensor:
            return chunked(n) if n < b else whole()

        key = (*key, torch.get_num_threads())
        if key in _MEASURED_CHUNKS:
            return run(_MEASURED_CHUNKS[key])
        timings, outs = {}, {}
        for n in (*(n for n in self.MEASURED_CHUNKS if n < b), b):
            run(n)  # the first call pays allocations and oneDNN's primitive creation
            start = time.perf_counter()
            outs[n] = run(n)
            timings[n] = time.perf_counter() - start
        _MEASURED_CHUNKS[key] = chosen = min(timings, key=timings.get)
        return outs[chosen]  # the bits every later call of this shape gives

    def _choose_impl(self, x: torch.Tensor, padding: tuple[int, int] | None = None) -> str:
        if self.impl != "auto":
            return self.impl
        if canonical_form():
            return "bmm" if self.pointwise else "conv"
        ho, wo = self._output_size(x.shape[-2:], self.padding if padding is None else padding)
        if self.pointwise:
            # Experts first writes E outputs per pixel; mixing, an in x out kernel per example.
            tiny = ho * wo <= self.EXPERTS_FIRST_MAX_PIXELS
            outputs = self.num_experts * ho * wo
            many_inputs = self.in_channels > self.EXPERTS_FIRST_IN_PER_OUTPUT * outputs
            return "experts" if tiny and many_inputs else "bmm"
        if self.depthwise and ho * wo <= self.TAPS_MAX_PIXELS:
            return "taps"
        return "conv"

    def _output_size(self, size, padding: tuple[int, int]) -> tuple[int, int]:
        return conv_output_size(size, self.kernel_size, self.stride, padding, self.dilation)

    def _cropped_experts(
        self, padding: tuple[int, int], size: tuple[int, int]
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The experts without the taps that only meet padding on this map, and what padding
        is left."""
        return crop_to_image(self.expert_kernels(), padding, self.dilation, size)

    def _forward_taps(
        self, x: torch.Tensor, routing_weights: torch.Tensor, padding: tuple[int, int]
    ) -> torch.Tensor:
        """Depthwise as a sum of per-channel scalings (:class:`TapPlan`); only the taps that
        meet the image are mixed."""
        b, c = x.shape[:2]
        taps = TapPlan(x.shape[-2:], self.kernel_size, self.stride, padding, self.dilation)
        experts = taps.select(self.weight.view(self.num_experts, c, *self.kernel_size))
        kernels = mix_experts(routing_weights, experts.reshape(self.num_experts, -1))  # [B, C*R*S]
        out = taps.apply(x, kernels.view(b, c, *experts.shape[-2:]))
        if self.bias is not None:
            out = out + (routing_weights @ self.bias).view(b, c, 1, 1)
        return out

    def _forward_experts_first(
        self, x: torch.Tensor, routing_weights: torch.Tensor, padding: tuple[int, int]
    ) -> torch.Tensor:
        """Run all E experts as one convolution, then mix their outputs per example."""
        if self.pointwise:
            return self._forward_experts_pointwise(x, routing_weights)
        b, e, g = x.shape[0], self.num_experts, self.groups
        out_g = self.out_channels // g
        # Group-major stacking so a grouped conv sees each group's E*out/g kernels together.
        weight = self.weight.view(e, g, out_g, *self.weight_shape[1:]).transpose(0, 1)
        weight = weight.reshape(g * e * out_g, *self.weight_shape[1:])  # [g*E*out/g, in/g, kh, kw]
        y = conv2d_tiny_aware(x, weight, None, self.stride, padding, self.dilation, g)
        ho, wo = y.shape[-2:]
        if _channels_last(x):  # y is channels-last too: mix it as [B, H'*W', g, E, out/g] rows
            y = _pixels_as_rows(y).view(b, ho * wo, g, e, out_g)
            out = torch.einsum("be,bpgeo->bpgo", routing_weights, y)
            out = _rows_as_map(out.reshape(b, ho * wo, self.out_channels), ho, wo)
        else:
            y = y.view(b, g, e, out_g, ho, wo)  # [B, g, E, out/g, H', W']
            out = torch.einsum("be,bgeohw->bgohw", routing_weights, y)
            out = out.reshape(b, self.out_channels, ho, wo)
        if self.bias is not None:
            out = out + (routing_weights @ self.bias).view(b, self.out_channels, 1, 1)
        return out

    def _forward_experts_pointwise(
        self, x: torch.Tensor, routing_weights: torch.Tensor
    ) -> torch.Tensor:
        """Pointwise experts first as one matmul over all pixels (a 1x1 conv, without
        oneDNN's layout conversions), then their outputs mixed per example.

        The output is rows of pixels, channels-last memory, also for NCHW input (the one
        exception to "output in the input's layout", shared with the pixels-as-rows ``bmm``):
        on <= 4 output pixels, copying it back to NCHW made a 2 px MBConv stack of CondConv
        layers (forward + backward, CPU) 3-13% slower than letting the layers after it run
        channels-last, where the next pointwise layer reads its input without a copy (NCHW
        input costs one, below).
        """
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        b, c, h, w = x.shape
        e, o = self.num_experts, self.out_channels
        rows = _pixels_as_rows(x).reshape(b * h * w, c)  # [B*H*W, in]: a copy for NCHW input
        y = (rows @ self.weight.view(e * o, c).t()).view(b, h * w, e, o)  # [B, H*W, E, out]
        out = torch.einsum("be,bpeo->bpo", routing_weights, y)  # [B, H*W, out]
        if self.bias is not None:
            out = out + (routing_weights @ self.bias).view(b, 1, o)
        return _rows_as_map(out, h, w)  # channels-last memory

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
