"""CondConv2d against independent references: a per-example loop and the expert sum."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ccsearch.layers import ROUTING_ACTIVATIONS, CondConv2d, Conv2d, Routing
from ccsearch.layers.cond_conv import mix_experts

# (in, out, kernel, stride, padding, dilation, groups, bias, impl)
SHAPES = [
    (8, 16, 3, 1, 1, 1, 1, True, "conv"),
    (8, 16, 3, 2, 1, 1, 1, False, "conv"),
    (12, 12, 3, 1, 1, 1, 12, False, "conv"),  # depthwise
    (12, 12, 5, 2, 2, 1, 12, True, "conv"),  # depthwise, stride 2
    (8, 16, 3, 1, 2, 2, 2, True, "conv"),  # dilated, grouped
    (16, 24, 1, 1, 0, 1, 1, False, "bmm"),  # pointwise as batched matmul
    (16, 24, 1, 2, 0, 1, 1, True, "bmm"),  # pointwise, stride 2
    (16, 24, 1, 1, 0, 1, 1, True, "conv"),  # pointwise as grouped conv
    (16, 24, 1, 1, 0, 1, 1, True, "experts"),  # experts first, outputs mixed
    (12, 12, 5, 2, 2, 1, 12, True, "experts"),  # depthwise, experts first
    (8, 16, 3, 1, 2, 2, 2, False, "experts"),  # dilated, grouped, experts first
    (12, 12, 3, 1, 1, 1, 12, True, "taps"),  # depthwise as per-tap scalings
    (12, 12, 5, 2, 2, 1, 12, False, "taps"),  # ... stride 2
    (12, 12, 3, 1, 2, 2, 12, True, "taps"),  # ... dilated
    (16, 24, 1, 1, 0, 1, 1, True, "auto"),
    (12, 12, 3, 1, 1, 1, 12, True, "auto"),
]


def _layer(shape, experts=4, routing="sigmoid"):
    cin, cout, k, s, p, d, g, bias, impl = shape
    torch.manual_seed(0)
    return CondConv2d(
        cin, cout, k, s, p, d, g, bias, num_experts=experts, routing=routing, impl=impl
    )


def _per_example_reference(layer: CondConv2d, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Explicit loop: mix each example's kernel by hand, run F.conv2d on that example alone."""
    experts = layer.expert_kernels()  # [E, out, in/g, k, k]
    outs = []
    for b in range(x.shape[0]):
        kernel = sum(r[b, e] * experts[e] for e in range(layer.num_experts))
        bias = (
            sum(r[b, e] * layer.bias[e] for e in range(layer.num_experts))
            if layer.bias is not None
            else None
        )
        outs.append(
            F.conv2d(
                x[b : b + 1],
                kernel,
                bias,
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups,
            )
        )
    return torch.cat(outs)


def _expert_sum_reference(layer: CondConv2d, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Linearity: the routing-weighted sum of E separate expert convolutions."""
    total = 0
    for e in range(layer.num_experts):
        bias = layer.bias[e] if layer.bias is not None else None
        y = F.conv2d(
            x,
            layer.expert_kernels()[e],
            bias,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )
        total = total + r[:, e].view(-1, 1, 1, 1) * y
    return total


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}-g{s[6]}-{s[8]}"
)
def test_matches_per_example_loop_and_expert_sum(shape):
    layer = _layer(shape)
    x = torch.randn(5, shape[0], 11, 11)
    out = layer(x)
    r = layer.routing.last_weights
    assert r.shape == (5, 4)
    torch.testing.assert_close(out, _per_example_reference(layer, x, r), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, _expert_sum_reference(layer, x, r), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("cin", "cout", "k", "groups"), [(48, 48, 3, 48), (48, 48, 5, 48),
                                                          (24, 40, 1, 1), (32, 16, 3, 1)])
def test_inference_chunks_are_measured_once_in_inference_mode_only(cin, cout, k, groups,
                                                                    channels_last):
    """In inference mode a batch runs at once or ``MEASURED_CHUNKS`` examples at a time,
    whichever this process measured faster, once per shape; every choice matches the
    per-example loop.  Under ``no_grad`` (a trainer's evaluation) nothing is measured and the result
    is the same bits every time, whatever inference mode chose."""
    from ccsearch.layers import cond_conv

    torch.manual_seed(0)
    layer = CondConv2d(cin, cout, k, padding=k // 2, groups=groups, num_experts=4, routing=None)
    x = torch.randn(3 * CondConv2d.INFERENCE_CHUNK + 1, cin, 7, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    r = torch.rand(len(x), 4)
    reference = _per_example_reference(layer, x, r)
    cond_conv._MEASURED_CHUNKS.clear()
    with torch.no_grad():
        evaluated = layer(x, r)
    assert not cond_conv._MEASURED_CHUNKS, "no_grad measures nothing"
    with torch.inference_mode():
        first = layer(x, r)
        assert len(cond_conv._MEASURED_CHUNKS) == 1, "one measurement for this shape"
        (key, chosen), = cond_conv._MEASURED_CHUNKS.items()
        assert chosen in (*CondConv2d.MEASURED_CHUNKS, len(x))
        assert torch.equal(layer(x, r), first) and len(cond_conv._MEASURED_CHUNKS) == 1
        outs = []
        for other in (*CondConv2d.MEASURED_CHUNKS, len(x)):
            cond_conv._MEASURED_CHUNKS[key] = other
            outs.append(layer(x, r))
    with torch.no_grad():
        assert torch.equal(layer(x, r), evaluated)
    for out in (first, *outs, evaluated):
        torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    cond_conv._MEASURED_CHUNKS.clear()


@pytest.mark.parametrize("activation", ROUTING_ACTIVATIONS)
def test_routing_is_activation_of_linear_of_pooled_input(activation):
    torch.manual_seed(1)
    routing = Routing(6, 5, activation)
    x = torch.randn(3, 6, 7, 7)
    logits = x.mean(dim=(2, 3)) @ routing.fc.weight.T + routing.fc.bias
    expected = {
        "sigmoid": torch.sigmoid,
        "softmax": lambda t: torch.softmax(t, 1),
        "tanh": torch.tanh,
        "relu": torch.relu,
    }[activation](logits)
    torch.testing.assert_close(routing(x), expected)
    torch.testing.assert_close(routing.last_weights, expected)
    if activation == "softmax":
        torch.testing.assert_close(routing.last_weights.sum(1), torch.ones(3))


@pytest.mark.parametrize("activation", ROUTING_ACTIVATIONS)
def test_routing_starts_with_zero_bias_and_timm_weights(activation):
    torch.manual_seed(0)
    routing = Routing(512, 32, activation)
    assert not routing.fc.bias.any()  # the paper's (TF) and timm's init, for every activation
    bound = 1 / (512 + 32) ** 0.5  # timm: uniform(+-1/sqrt(fan_in + fan_out))
    assert routing.fc.weight.abs().max().item() <= bound
    assert routing.fc.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)


@pytest.mark.parametrize("activation", ROUTING_ACTIVATIONS)
def test_calibrated_routing_is_sigmoids_slope_and_start_for_every_activation(activation):
    """Calibrated: logits ``b + W x / 4``, bias where the activation is 1/2, softmax and
    ReLU scaled to mass E/2; sigmoid is the paper's function, bit for bit."""
    torch.manual_seed(1)
    E = 6
    calibrated = Routing(10, E, activation, calibrated=True)
    raw = Routing(10, E, activation)
    raw.load_state_dict(calibrated.state_dict())
    x = torch.randn(4, 10, 5, 5)
    pooled = x.mean(dim=(2, 3))
    if activation == "sigmoid":
        assert not calibrated.fc.bias.any()
        assert torch.equal(calibrated(x), raw(x))
        return
    start = {"softmax": 0.0, "tanh": math.atanh(0.5), "relu": 0.5}[activation]
    torch.testing.assert_close(calibrated.fc.bias, torch.full((E,), start))
    logits = (pooled / 4) @ calibrated.fc.weight.T + calibrated.fc.bias
    if activation == "softmax":
        expected = torch.softmax(logits, 1) * E / 2
    elif activation == "tanh":
        expected = torch.tanh(logits)
    else:
        expected = torch.relu(logits) / torch.relu(logits).sum(1, keepdim=True) * E / 2
    torch.testing.assert_close(calibrated(x), expected)
    assert not torch.allclose(raw(x), expected)  # the raw routing is another function
    # Where a centred input puts it (pooled ~ 0): every weight 1/2, as sigmoid starts.
    torch.testing.assert_close(calibrated(torch.zeros(2, 10, 3, 3)), torch.full((2, E), 0.5))


@pytest.mark.parametrize("activation", ROUTING_ACTIVATIONS)
def test_routing_blend_ramps_every_example_from_one_shared_kernel_to_its_own(activation):
    """``blend`` 0: every example gets the experts' sum / 2 (one static kernel), checked
    against ``F.conv2d`` with that kernel; 1: the routing untouched, bit for bit; between:
    the straight line from 1/2 to the routing's own weights."""
    torch.manual_seed(2)
    layer = CondConv2d(6, 8, 3, padding=1, num_experts=4, routing=activation,
                       calibrated_routing=True)
    x = torch.randn(5, 6, 7, 7)
    own = layer.routing(x)
    layer.routing.blend = 0.0
    shared = layer.expert_kernels().sum(0) / 2
    torch.testing.assert_close(layer(x), F.conv2d(x, shared, layer.bias.sum(0) / 2, padding=1),
                               atol=1e-5, rtol=1e-5)
    layer.routing.blend = 0.25
    torch.testing.assert_close(layer.routing(x), 0.5 + 0.25 * (own - 0.5))
    torch.testing.assert_close(layer.routing.last_weights, 0.5 + 0.25 * (own - 0.5))
    layer.routing.blend = 1.0
    assert torch.equal(layer.routing(x), own)


def test_calibrated_relu_routing_with_every_expert_off_gives_zero_weights():
    routing = Routing(4, 3, "relu", calibrated=True)
    with torch.no_grad():
        routing.fc.bias.fill_(-10.0)
    r = routing(torch.randn(2, 4, 3, 3))
    assert torch.isfinite(r).all() and not r.any()


def test_routing_switched_on_start_is_an_option():
    torch.manual_seed(0)
    routing = Routing(64, 8, "relu", bias_init=1.0)
    torch.testing.assert_close(routing.fc.bias, torch.ones(8))
    r = routing(torch.rand(16, 64, 5, 5))  # non-negative features, as after a ReLU
    assert (r > 0).all() and r.mean().item() == pytest.approx(1.0, abs=0.2)
    routing.reset_parameters()
    torch.testing.assert_close(routing.fc.bias, torch.ones(8))


def test_routing_dropout_only_in_training():
    torch.manual_seed(0)
    routing = Routing(64, 4, "sigmoid", dropout=0.5)
    x = torch.randn(2, 64, 3, 3)
    routing.eval()
    first, second = routing(x), routing(x)
    torch.testing.assert_close(first, second)
    routing.train()
    assert not torch.allclose(routing(x), first)


def test_shared_routing_weights_are_used_when_given():
    layer = CondConv2d(4, 4, 3, padding=1, num_experts=3, routing=None)
    assert layer.routing is None
    x = torch.randn(2, 4, 5, 5)
    r = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = layer(x, r)
    experts = layer.expert_kernels()
    torch.testing.assert_close(out[0:1], F.conv2d(x[0:1], experts[0], layer.bias[0], padding=1))
    torch.testing.assert_close(out[1:2], F.conv2d(x[1:2], experts[2], layer.bias[2], padding=1))
    with pytest.raises(AssertionError, match="routing_weights"):
        layer(x)


# (in, out, kernel, stride, padding, dilation, groups, bias) for the gradient agreement
GRAD_SHAPES = [
    (8, 16, 3, 1, 1, 1, 1, True),  # full 3x3
    (8, 16, 3, 2, 1, 1, 2, False),  # grouped, stride 2
    (12, 12, 3, 1, 1, 1, 12, True),  # depthwise
    (12, 12, 5, 2, 2, 1, 12, False),  # depthwise, stride 2
    (12, 12, 3, 1, 2, 2, 12, True),  # depthwise, dilated
    (16, 24, 1, 1, 0, 1, 1, True),  # pointwise
    (16, 24, 1, 2, 0, 1, 1, False),  # pointwise, stride 2
]


def _impls(layer: CondConv2d) -> list[str]:
    """Every execution this layer offers."""
    return ["conv", "experts", "auto"] + ["bmm"] * layer.pointwise + ["taps"] * layer.depthwise


@pytest.mark.parametrize("size", [1, 2, 3, 9])
@pytest.mark.parametrize(
    "shape", GRAD_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}-d{s[5]}-g{s[6]}"
)
def test_gradients_of_every_impl_match_the_per_example_loop(shape, size):
    """d/d(input, routing weights, experts, bias) of every execution, on tiny and larger maps."""
    cin, cout, k, s, p, d, g, bias = shape
    torch.manual_seed(0)
    layer = CondConv2d(cin, cout, k, s, p, d, g, bias, num_experts=4, routing=None)
    x = torch.randn(3, cin, size, size, requires_grad=True)
    r = torch.rand(3, 4, requires_grad=True)
    _assert_every_impl_matches_the_loop(layer, x, r, atol=1e-5)


def _assert_every_impl_matches_the_loop(layer, x, r, atol):
    """Output and d/d(input, routing weights, experts, bias) of every execution against the
    per-example loop; returns the loop's output."""
    inputs = [x, r, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    reference = _per_example_reference(layer, x, r)
    upstream = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, inputs, upstream)
    for impl in _impls(layer):
        layer.impl = impl
        out = layer(x, r)
        torch.testing.assert_close(out, reference, atol=atol, rtol=1e-5, msg=impl)
        grads = torch.autograd.grad(out, inputs, upstream)
        names = ["input", "routing", "weight", "bias"]
        for name, got, want in zip(names, grads, expected, strict=False):
            torch.testing.assert_close(got, want, atol=atol, rtol=1e-5, msg=f"{impl}: d/d {name}")
    return reference.detach()


@pytest.mark.parametrize("size", [1, 7])
@pytest.mark.parametrize(
    "shape", GRAD_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}-d{s[5]}-g{s[6]}"
)
def test_inference_mode_matches_the_per_example_loop(shape, size):
    """Without autograd, bmm mixes kernels a few examples at a time: a batch of 21 covers a
    ragged last chunk."""
    cin, cout, k, s, p, d, g, bias = shape
    torch.manual_seed(0)
    layer = CondConv2d(cin, cout, k, s, p, d, g, bias, num_experts=4, routing=None)
    x, r = torch.randn(21, cin, size, size), torch.rand(21, 4)
    with torch.no_grad():
        reference = _per_example_reference(layer, x, r)
    for impl in _impls(layer):
        layer.impl = impl
        with torch.inference_mode():
            out = layer(x, r)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5, msg=impl)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("cin", "cout", "k", "groups", "size"), [
    (192, 128, 1, 1, 7),  # pointwise: 24,576 kernel values, split over 2 or 3 threads
    (1024, 1024, 5, 1024, 7),  # depthwise: 25,600 values, not divisible by 3 threads
    (1024, 1024, 3, 1024, 1),  # depthwise on a 1 px output (taps)
])
def test_batch_of_one_mixes_on_every_thread_and_matches_the_per_example_loop(
        cin, cout, k, groups, size, threads):
    """One example's large kernel is mixed as one block of the experts per thread."""
    torch.manual_seed(0)
    layer = CondConv2d(cin, cout, k, padding=k // 2, groups=groups, bias=True, num_experts=8,
                       routing=None)
    x = torch.randn(1, cin, size, size, requires_grad=True)
    r = torch.rand(1, 8, requires_grad=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.testing.assert_close(mix_experts(r, layer.weight), r @ layer.weight,
                                   atol=1e-6, rtol=1e-6)
        reference = _assert_every_impl_matches_the_loop(layer, x, r, atol=1e-4)
        for impl in _impls(layer):
            layer.impl = impl
            with torch.inference_mode():
                torch.testing.assert_close(layer(x, r), reference, atol=1e-4, rtol=1e-5,
                                           msg=impl)
    finally:
        torch.set_num_threads(previous)


def test_taps_on_channels_last_input_and_with_padding_modes():
    torch.manual_seed(0)
    for mode in CondConv2d.PADDING_MODES:
        layer = CondConv2d(6, 6, 3, 2, padding=1, groups=6, padding_mode=mode, num_experts=3)
        x = torch.randn(4, 6, 2, 2).contiguous(memory_format=torch.channels_last)
        layer.impl = "conv"
        expected = layer(x)
        layer.impl = "auto"
        assert layer._choose_impl(x) == "taps"
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_expert_and_the_routing():
    layer = CondConv2d(6, 8, 3, padding=1, num_experts=4, routing="sigmoid")
    x = torch.randn(3, 6, 9, 9)
    layer(x).square().mean().backward()
    grads = layer.weight.grad.view(4, -1)
    assert all(g.abs().sum() > 0 for g in grads), "every expert gets a gradient"
    assert layer.bias.grad.abs().sum() > 0
    assert layer.routing.fc.weight.grad.abs().sum() > 0
    assert layer.routing.fc.bias.grad.abs().sum() > 0


def test_experts_initialised_like_a_standalone_conv():
    torch.manual_seed(0)
    layer = CondConv2d(64, 64, 3, padding=1, num_experts=8)
    reference = torch.nn.Conv2d(64, 64, 3, padding=1)
    bound = reference.weight.abs().max().item()
    experts = layer.expert_kernels()
    assert experts.abs().max().item() <= bound * 1.0001
    for e in range(8):  # each expert spans the same uniform range, and experts differ
        assert experts[e].std().item() == pytest.approx(reference.weight.std().item(), rel=0.05)
    assert not torch.allclose(experts[0], experts[1])


def test_auto_runs_experts_first_and_taps_only_on_tiny_maps_in_eager_mode():
    layer = CondConv2d(16, 24, 1, num_experts=4)
    assert layer._choose_impl(torch.randn(2, 16, 1, 1)) == "experts"
    assert layer._choose_impl(torch.randn(2, 16, 2, 2)) == "bmm"  # 16 inputs < 1.5 x 4 x 4
    assert CondConv2d(32, 24, 1, num_experts=4)._choose_impl(torch.randn(2, 32, 2, 2)) == "experts"
    assert layer._choose_impl(torch.randn(2, 16, 7, 7)) == "bmm"
    depthwise = CondConv2d(16, 16, 3, padding=1, groups=16, num_experts=4)
    assert depthwise._choose_impl(torch.randn(2, 16, 1, 1)) == "taps"
    assert depthwise._choose_impl(torch.randn(2, 16, 2, 2)) == "conv"  # 2x2 out: conv is fine
    strided = CondConv2d(16, 16, 5, 2, 2, groups=16, num_experts=4)
    assert strided._choose_impl(torch.randn(2, 16, 2, 2)) == "taps"  # 1x1 out
    full = CondConv2d(16, 16, 3, padding=1, num_experts=4)
    assert full._choose_impl(torch.randn(2, 16, 1, 1)) == "conv"
    tiny = torch.randn(3, 16, 1, 1)
    traced = torch.jit.trace(layer.eval(), tiny)  # the canonical mixed-kernel form
    assert "aten::bmm" in str(traced.inlined_graph)
    torch.testing.assert_close(traced(tiny), layer(tiny), atol=1e-5, rtol=1e-5)
    traced = torch.jit.trace(depthwise.eval(), tiny)
    assert "aten::_convolution" in str(traced.inlined_graph)
    torch.testing.assert_close(traced(tiny), depthwise(tiny), atol=1e-5, rtol=1e-5)


def test_jit_trace_matches_eager():
    layer = CondConv2d(8, 8, 3, padding=1, groups=8, num_experts=4).eval()
    x = torch.randn(2, 8, 10, 10)
    traced = torch.jit.trace(layer, x)
    other = torch.randn(2, 8, 10, 10)
    torch.testing.assert_close(traced(other), layer(other))


@pytest.mark.parametrize("impl", ["conv", "bmm"])
def test_torch_export_with_dynamic_batch(impl):
    layer = CondConv2d(8, 16, 1, num_experts=4, impl=impl).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(layer, (torch.randn(2, 8, 6, 6),), dynamic_shapes=({0: batch},))
    for b in (1, 5):
        x = torch.randn(b, 8, 6, 6)
        torch.testing.assert_close(program.module()(x), layer(x))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="divisible by groups"):
        CondConv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="num_experts"):
        CondConv2d(6, 8, 3, num_experts=0)
    with pytest.raises(ValueError, match="bmm"):
        CondConv2d(6, 8, 3, impl="bmm")
    with pytest.raises(ValueError, match="taps"):
        CondConv2d(6, 8, 3, groups=2, impl="taps")
    with pytest.raises(ValueError, match="impl must be"):
        CondConv2d(6, 8, 3, impl="fast")
    with pytest.raises(ValueError, match="routing activation"):
        CondConv2d(6, 8, 3, routing="gelu")


@pytest.mark.parametrize("size, kernel, stride", [(1, 3, 1), (1, 5, 2), (2, 5, 1), (2, 5, 2), (2, 3, 2), (3, 7, 1)])
def test_tiny_map_kernel_crop_is_exact(size, kernel, stride):
    torch.manual_seed(0)
    x = torch.randn(3, 6, size, size)
    static = Conv2d(6, 6, kernel, stride, kernel // 2, groups=6)
    expected = F.conv2d(x, static.weight, static.bias, stride, kernel // 2, 1, 6)
    torch.testing.assert_close(static(x), expected)
    layer = CondConv2d(6, 6, kernel, stride, kernel // 2, groups=6, num_experts=3)
    out = layer(x)
    torch.testing.assert_close(out, _per_example_reference(layer, x, layer.routing.last_weights), atol=1e-5, rtol=1e-5)



def _aten_ops(fn) -> set[str]:
    """The aten ops ``fn`` dispatches, its backward included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    seen: set[str] = set()
    with Log():
        fn()
    return seen


# (in, out, kernel, stride, groups, bias, input size): 1-pixel outputs of the low-res proxy
ONE_PIXEL_OUTPUTS = [
    (16, 24, 1, 1, 1, False, 1),  # pointwise (an MBConv's expand or project, the head)
    (16, 24, 1, 1, 1, True, 1),  # squeeze-excite's reduce and expand
    (16, 24, 1, 2, 1, False, 2),  # strided pointwise: reads one pixel
    (12, 12, 3, 1, 12, False, 1),  # depthwise on a 1x1 map: the centre tap only
    (12, 12, 5, 2, 12, True, 2),  # depthwise, stride 2, from a 2x2 map: 4 taps meet it
    (12, 12, 3, 2, 12, False, 1),
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", ONE_PIXEL_OUTPUTS, ids=lambda s: f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}-g{s[4]}-{s[6]}px")
def test_static_conv_on_one_pixel_outputs_is_a_matmul_or_scaling(shape, channels_last):
    """Where oneDNN is slowest (1-pixel outputs), eager mode runs no convolution, with the
    output and every gradient of ``F.conv2d``; a traced graph keeps the convolution."""
    cin, cout, k, s, g, bias, size = shape
    torch.manual_seed(0)
    conv = Conv2d(cin, cout, k, s, k // 2, groups=g, bias=bias)
    x = _in_layout(torch.randn(5, cin, size, size), channels_last).requires_grad_()
    out = conv(x)
    assert out.shape[-2:] == (1, 1)
    expected = F.conv2d(x, conv.weight, conv.bias, s, k // 2, 1, g)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *conv.parameters()], grad)
    want = torch.autograd.grad(expected, [x, *conv.parameters()], grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    ops = _aten_ops(lambda: conv(x).sum().backward())
    assert not {"convolution", "convolution_backward"} & ops, sorted(ops)
    graph = torch.jit.trace(conv, x.detach()).inlined_graph
    assert "aten::_convolution" in str(graph)
    # a larger output still runs the convolution
    assert "convolution" in _aten_ops(lambda: conv(torch.randn(2, cin, 4 * s, 4 * s)))


CHANNELS_LAST = torch.channels_last


def _in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=CHANNELS_LAST if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("size", [2, 3, 7])
@pytest.mark.parametrize(
    "shape", GRAD_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}-d{s[5]}-g{s[6]}"
)
def test_every_impl_keeps_the_input_layout_and_matches_the_per_example_loop(shape, size, batch):
    """Channels-last in, channels-last out, for every execution; NCHW in, NCHW out, except the
    pixels-as-rows pointwise products (documented: channels-last memory measured faster).
    Output and gradients (input, routing, experts, bias) match the per-example loop in both
    layouts.  A batch of 9 > 2 x 4 experts: bmm on pixel rows mixes transposed kernels; a
    batch of 1: the grouped conv runs unfolded, in the input's layout."""
    cin, cout, k, s, p, d, g, bias = shape
    torch.manual_seed(0)
    layer = CondConv2d(cin, cout, k, s, p, d, g, bias, num_experts=4, routing=None)
    x0 = torch.randn(batch, cin, size, size, requires_grad=True)
    r = torch.rand(batch, 4, requires_grad=True)
    params = [layer.weight] + ([layer.bias] if bias else [])
    reference = _per_example_reference(layer, x0, r)
    upstream = torch.randn_like(reference)
    expected = (reference, *torch.autograd.grad(reference, [x0, r, *params], upstream))
    names = ["output", "d/d input", "d/d routing", "d/d weight", "d/d bias"]
    for impl in _impls(layer):
        layer.impl = impl
        chosen, results = layer._choose_impl(x0), []
        for channels_last in (False, True):
            x = _in_layout(x0.detach(), channels_last).requires_grad_()
            out = layer(x, r)
            grads = torch.autograd.grad(out, [x, r, *params], _in_layout(upstream, channels_last))
            what = f"{impl}, {'channels-last' if channels_last else 'NCHW'}"
            pixel_rows = (chosen == "experts" and layer.pointwise) or (
                chosen == "bmm" and out.shape[-2] * out.shape[-1] <= CondConv2d.BMM_PIXELS_AS_ROWS
            )
            if channels_last:
                assert out.is_contiguous(memory_format=CHANNELS_LAST), f"{what}: layout lost"
            elif not pixel_rows:
                assert out.is_contiguous(), f"{what}: layout lost"
            results.append((out, *grads))
            for name, got, want in zip(names, results[-1], expected, strict=False):
                # d/d routing sums over the whole map: float32 error grows with its largest value
                atol = 1e-5 * max(1.0, want.abs().max().item())
                torch.testing.assert_close(got, want, atol=atol, rtol=1e-5, msg=f"{what}: {name}")
        for name, got, want in zip(names, results[1], results[0], strict=False):  # CL vs NCHW
            atol = 1e-5 * max(1.0, want.abs().max().item())
            torch.testing.assert_close(got, want, atol=atol, rtol=1e-5, msg=f"{impl}: {name}")


@pytest.mark.parametrize(
    "shape", GRAD_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}-d{s[5]}-g{s[6]}"
)
def test_inference_keeps_channels_last(shape):
    """Without autograd (kernels mixed 8 examples at a time, a ragged last chunk of 5)."""
    cin, cout, k, s, p, d, g, bias = shape
    torch.manual_seed(0)
    layer = CondConv2d(cin, cout, k, s, p, d, g, bias, num_experts=4, routing=None)
    x, r = torch.randn(21, cin, 7, 7), torch.rand(21, 4)
    with torch.no_grad():
        reference = _per_example_reference(layer, x, r)
    for impl in _impls(layer):
        layer.impl = impl
        with torch.inference_mode():
            out = layer(_in_layout(x, True), r)
        assert out.is_contiguous(memory_format=CHANNELS_LAST), impl
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5, msg=impl)


def test_channels_last_with_padding_modes():
    """Circular padding returns NCHW memory; the layer still answers channels-last."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, 5)
    for mode in CondConv2d.PADDING_MODES:
        layer = CondConv2d(6, 8, 3, padding=1, padding_mode=mode, num_experts=3)
        expected = layer(x)
        out = layer(_in_layout(x, True))
        assert out.is_contiguous(memory_format=CHANNELS_LAST), mode
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _activation_copies(layer: CondConv2d, x: torch.Tensor, r: torch.Tensor) -> tuple[int, int]:
    """Copies (``copy_``, ``clone``, ``_to_copy``) of tensors at least as large as the input
    or output, in the forward and in the backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    copy_ops = (torch.ops.aten.copy_, torch.ops.aten.clone, torch.ops.aten._to_copy)

    class Copies(TorchDispatchMode):
        def __init__(self, size: int):
            super().__init__()
            self.size, self.count = size, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in copy_ops and out.numel() >= self.size:
                self.count += 1
            return out

    size = min(x.numel(), layer(x, r).numel())
    with Copies(size) as forward:
        out = layer(x, r)
    upstream = torch.ones_like(out)  # in the output's layout, as a channels-last BN gives it
    with Copies(size) as backward:
        out.backward(upstream)
    return forward.count, backward.count


@pytest.mark.parametrize(
    "impl, shape, copies",
    [
        ("bmm", (16, 24, 1, 1, 0, 1), (0, 0)),  # rows of the channels-last input: views
        ("taps", (12, 12, 3, 1, 1, 12), (0, 0)),  # elementwise: the input's layout
        ("conv", (12, 12, 3, 1, 1, 12), (2, 2)),  # folded into channels: in and out copied
        ("conv", (8, 16, 3, 1, 1, 1), (2, 2)),
    ],
)
def test_channels_last_activation_copies(impl, shape, copies):
    cin, cout, k, s, p, g = shape
    torch.manual_seed(0)
    layer = CondConv2d(cin, cout, k, s, p, groups=g, num_experts=4, routing=None, impl=impl)
    x = _in_layout(torch.randn(4, cin, 8, 8), True).requires_grad_()
    assert _activation_copies(layer, x, torch.rand(4, 4)) == copies
    if impl != "conv":  # and NCHW input: none either
        x = torch.randn(4, cin, 8, 8, requires_grad=True)
        assert _activation_copies(layer, x, torch.rand(4, 4)) == (0, 0)


@pytest.mark.parametrize("impl, kernel, groups", [("bmm", 1, 1), ("conv", 1, 1), ("conv", 3, 8)])
def test_torch_export_of_channels_last_input_with_dynamic_batch(impl, kernel, groups):
    """The layout branches are decided at export time, without guards on the batch."""
    cout = 16 if groups == 1 else 8
    layer = CondConv2d(8, cout, kernel, padding=kernel // 2, groups=groups, num_experts=4, impl=impl)
    layer = layer.eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    example = _in_layout(torch.randn(2, 8, 6, 6), True)
    program = torch.export.export(layer, (example,), dynamic_shapes=({0: batch},))
    for b in (1, 5, 21):
        x = _in_layout(torch.randn(b, 8, 6, 6), True)
        out = program.module()(x)
        assert out.is_contiguous(memory_format=CHANNELS_LAST)
        torch.testing.assert_close(out, layer(x))
