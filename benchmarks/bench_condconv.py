"""Benchmark: a CondConv2d layer against its static conv, its floor and the naive mixture.

Run ``python benchmarks/bench_condconv.py`` (forward + backward of mobile-sized layers),
``--forward`` (forward only, in ``torch.inference_mode``, at batch 1 and 64: what an
exported model runs), ``--smoke`` (every CondConv layer shape of the smoke proxy, batch
64; with ``--threads 1`` this is the one-thread check), ``--quick``, ``--filter TEXT``,
``--device cuda``, ``--experts N``.  Per shape, ``torch.utils.benchmark`` times:

``static``   the static conv of the same shape (``ccsearch.layers.Conv2d``, as models run it);
``floor``    the static conv plus the kernel-mixing matmul ``[B, E] @ [E, P]``: what a
             layer that mixes one kernel per example cannot avoid;
``conv`` / ``bmm`` / ``experts`` / ``taps``  ``CondConv2d(impl=...)`` where timed;
``auto``     ``CondConv2d(impl="auto")``: what users get;
``naive``    the mixture of experts: ``E`` separate convolutions, weighted and summed.

Variants are interleaved: ``--rounds`` rounds each give every variant a short
``blocked_autorange``, and the rounds are merged, so the machine's load hits all alike.
The layers run with ``routing=None`` and fixed routing weights that require grad (the
layer is timed, not its routing function); backward gets a dense ``d loss / d out``,
as from a network's batch norm.  ``--next-layer`` follows every variant with batch norm,
ReLU and a static 1x1 conv (in the input's layout), so that a layout the layer hands on
is paid for where it is paid in a network.  Before timing, every shape checks that all executions
and naive agree (outputs and gradients to 1e-4), so nothing wrong is ever timed.
How to read the output: README.md next to this file.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from ccsearch.layers import CondConv2d, Conv2d  # noqa: E402

TINY = 4  # output pixels up to which "experts" (1x1) and "taps" (depthwise) are timed


@dataclass(frozen=True)
class Shape:
    """One layer: ``depthwise`` means ``groups = cin = cout``; ``hw`` is the input size."""

    cin: int
    cout: int
    k: int
    stride: int
    hw: int
    batch: int
    depthwise: bool = False

    @property
    def groups(self) -> int:
        return self.cin if self.depthwise else 1

    @property
    def kind(self) -> str:
        return "depthwise" if self.depthwise else ("1x1" if self.k == 1 else f"{self.k}x{self.k}")

    @property
    def out_hw(self) -> int:
        return (self.hw - 1) // self.stride + 1

    def impls(self) -> list[str]:
        tiny = self.out_hw**2 <= TINY
        pointwise = self.k == 1 and not self.depthwise
        return (
            ["conv"]
            + ["bmm"] * pointwise
            + ["experts"] * (pointwise and tiny)
            + ["taps"] * (self.depthwise and tiny)
        )

    def label(self) -> str:
        layer = (
            f"dw{self.k}x{self.k} {self.cin}"
            if self.depthwise
            else f"{self.k}x{self.k} {self.cin}->{self.cout}"
        )
        return f"{layer} @{self.hw}px s{self.stride} B{self.batch}"


def pw(cin: int, cout: int, hw: int, batch: int, stride: int = 1) -> Shape:
    return Shape(cin, cout, 1, stride, hw, batch)


def dw(ch: int, k: int, hw: int, batch: int, stride: int = 1) -> Shape:
    return Shape(ch, ch, k, stride, hw, batch, depthwise=True)


# Layers of MnasNet-A1 / MobileNetV2 / EfficientNet-B0 at 224px, plus two proxy-resolution maps.
DEFAULT_SHAPES = (
    pw(32, 192, 56, 32),
    pw(96, 576, 14, 64),
    pw(576, 96, 14, 64),
    pw(160, 960, 7, 128),
    pw(320, 1280, 7, 128),
    pw(160, 960, 4, 64),
    pw(320, 1280, 2, 64),
    dw(96, 3, 56, 32, stride=2),
    dw(144, 3, 56, 32, stride=2),
    dw(240, 5, 28, 32, stride=2),
    dw(480, 3, 14, 64),
    dw(672, 5, 14, 32),
    dw(960, 3, 7, 128),
)
QUICK_SHAPES = (
    pw(96, 576, 14, 32),
    pw(160, 960, 7, 32),
    pw(160, 960, 2, 32),
    dw(480, 3, 14, 32),
    dw(960, 3, 7, 32),
)
# Inference: the late layers an exported model spends its time in, at batch 1 and 64.
FORWARD_LAYERS = (
    pw(96, 576, 14, 1),
    pw(576, 96, 14, 1),
    pw(160, 960, 7, 1),
    pw(960, 160, 7, 1),
    pw(320, 1280, 7, 1),
    dw(144, 3, 56, 1, stride=2),
    dw(240, 5, 28, 1, stride=2),
    dw(480, 3, 14, 1),
    dw(672, 5, 14, 1),
    dw(960, 3, 7, 1),
    dw(960, 5, 7, 1),
)
FORWARD_SHAPES = tuple(replace(s, batch=b) for b in (1, 64) for s in FORWARD_LAYERS)


def smoke_shapes(experts: int) -> tuple[Shape, ...]:
    """Every CondConv layer shape of MnasNet-A1 with CondConv in all groups, on the smoke proxy."""
    from ccsearch.arch import build_model, get_backbone
    from ccsearch.train.proxy import PRESETS

    proxy = PRESETS["smoke"]
    spec = get_backbone("mnasnet_a1").with_condconv(list(range(1, 8)), experts)
    with torch.device("meta"):
        model = build_model(proxy.adapt(spec, 10)).eval()
    found: dict[Shape, None] = {}

    def hook(m: CondConv2d, args, out) -> None:
        s = Shape(
            m.in_channels,
            m.out_channels,
            m.kernel_size[0],
            m.stride[0],
            args[0].shape[-1],
            proxy.batch_size,
            depthwise=m.depthwise,
        )
        found[s] = None

    for m in model.modules():
        if isinstance(m, CondConv2d):
            m.register_forward_hook(hook)
    model(torch.empty(proxy.batch_size, 3, proxy.resolution, proxy.resolution, device="meta"))
    return tuple(found)


class Case:
    """The tensors and one step per variant (forward + backward, or forward only) of a shape."""

    def __init__(
        self,
        s: Shape,
        experts: int,
        device: torch.device,
        forward_only: bool,
        channels_last: bool = False,
        next_layer: bool = False,
    ):
        self.shape, self.forward_only = s, forward_only
        self.label = "forward only (inference mode)" if forward_only else "forward + backward"
        # Training needs d/d(input) too, as every layer but a network's first does.
        x = torch.randn(s.batch, s.cin, s.hw, s.hw, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x.requires_grad_(not forward_only)
        self.r = torch.rand(s.batch, experts, device=device).requires_grad_()
        pad = s.k // 2
        self.cc = {}
        for impl in [*s.impls(), "auto"]:
            self.cc[impl] = CondConv2d(
                s.cin,
                s.cout,
                s.k,
                s.stride,
                pad,
                groups=s.groups,
                bias=False,
                num_experts=experts,
                routing=None,
                impl=impl,
            ).to(device)
            self.cc[impl].weight = self.cc["conv"].weight  # the same experts everywhere
        self.auto_impl = self.cc["auto"]._choose_impl(self.x)
        # The static layer as a plain model runs it (ccsearch's Conv2d drops the kernel taps
        # that only meet padding on tiny maps).
        self.static = Conv2d(s.cin, s.cout, s.k, s.stride, pad, groups=s.groups, bias=False).to(
            device
        )
        self.experts = self.cc["conv"].weight
        self.next = nn.Identity()
        if next_layer:  # as a network runs the layer: BN, ReLU, the next (static) conv
            bn, conv = nn.BatchNorm2d(s.cout), Conv2d(s.cout, s.cout, 1, bias=False)
            self.next = nn.Sequential(bn, nn.ReLU(), conv).to(device).train(not forward_only)
            if channels_last:
                self.next = self.next.to(memory_format=torch.channels_last)
        out = (s.batch, s.cout, s.out_hw, s.out_hw)
        self.ones = torch.ones(out, device=device)  # d loss/d out, dense as from batch norm
        if channels_last:  # ... laid out as a channels-last batch norm gives it
            self.ones = self.ones.contiguous(memory_format=torch.channels_last)
        self.kernel_grad = torch.randn(s.batch, self.experts.shape[1], device=device)
        self.steps: dict[str, Callable[[], object]] = {
            "static": lambda: self.run(
                lambda: [self.next(self.static(self.x))], [self.static.weight]
            ),
            "floor": lambda: self.run(
                lambda: [self.next(self.static(self.x)), self.r @ self.experts],
                [self.static.weight, self.experts],
            ),
            **{
                name: (
                    lambda m=m: self.run(lambda: [self.next(m(self.x, self.r))], [self.experts])
                )
                for name, m in self.cc.items()
            },
            "naive": lambda: self.run(lambda: [self.next(self.naive(self.x))], [self.experts]),
        }

    def run(self, forward: Callable[[], list[torch.Tensor]], weights: list[torch.Tensor]):
        if self.forward_only:
            with torch.inference_mode():
                return forward()
        outs = forward()
        grads = [self.ones, self.kernel_grad][: len(outs)]
        return torch.autograd.grad(outs, [*weights, self.r, self.x], grads, allow_unused=True)

    def naive(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture of experts: ``sum_e r[:, e] * conv(x, W_e)``, E separate convolutions."""
        m = self.cc["conv"]
        kernels = self.experts.view(m.num_experts, *m.weight_shape)
        out = 0
        for e in range(m.num_experts):
            y = F.conv2d(x, kernels[e], None, m.stride, m.padding, m.dilation, m.groups)
            out = out + y * self.r[:, e].view(-1, 1, 1, 1)
        return out

    def verify(self) -> None:
        """Every execution and naive agree with ``conv``: outputs and gradients to 1e-4."""
        results = {}
        for name in [*self.cc, "naive"]:
            x = self.x.detach().requires_grad_()
            out = self.naive(x) if name == "naive" else self.cc[name](x, self.r)
            results[name] = (
                out.detach(),
                torch.autograd.grad(out, [self.experts, self.r, x], self.ones),
            )
        ref_out, ref_grads = results["conv"]
        for name, (out, grads) in results.items():
            for got, want, what in zip(
                (out, *grads),
                (ref_out, *ref_grads),
                ("output", "d/dW", "d/dr", "d/dx"),
                strict=True,
            ):
                err = (got - want).abs().max().item() / max(1.0, want.abs().max().item())
                assert err <= 1e-4, (
                    f"{self.shape.label()}: {name} {what} differs from conv by {err:.1e}"
                )


def measure(
    case: Case, rounds: int, min_run_time: float, timer, threads: int
) -> dict[str, benchmark.Measurement]:
    """Per variant, ``rounds`` interleaved ``blocked_autorange`` samples merged into one."""
    names = list(case.steps)
    samples: dict[str, list[benchmark.Measurement]] = {n: [] for n in names}
    for rnd in range(rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            t = benchmark.Timer(
                "step()",
                globals={"step": case.steps[name]},
                label=case.label,
                sub_label=case.shape.label(),
                description=name,
                num_threads=threads,
                timer=timer,
            )
            samples[name].append(t.blocked_autorange(min_run_time=min_run_time))
    return {n: benchmark.Measurement.merge(m)[0] for n, m in samples.items()}


def steady_malloc() -> str:
    """Keep glibc from handing big tensors back to the OS after every step.

    Otherwise each step's multi-MB tensors are fresh ``mmap`` pages, faulted in again
    on every call, and a layer's time then depends on glibc's adaptive threshold (a 12 MB
    output: 11 ms or 32 ms for the same layer, one run to the next).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default (not glibc)"
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    return "glibc without mmap or trim (mallopt)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="5 smaller shapes")
    which.add_argument(
        "--forward", action="store_true", help="forward only, inference mode, batch 1 and 64"
    )
    which.add_argument(
        "--smoke", action="store_true", help="every CondConv shape of the smoke proxy"
    )
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="CPU threads (default: torch's)",
    )
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument(
        "--min-run-time", type=float, default=0.05, help="seconds per variant per round"
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the thread's CPU time, not wall time (--threads 1 on a shared machine)",
    )
    ap.add_argument(
        "--channels-last", action="store_true", help="input (and static conv) channels-last"
    )
    ap.add_argument(
        "--next-layer",
        action="store_true",
        help="follow every variant with BN, ReLU and a static 1x1 conv (layout costs)",
    )
    ap.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's mmap threshold alone"
    )
    ap.add_argument("--filter", default="", help="only shapes whose label contains this text")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    if args.cpu_time and (args.threads != 1 or args.device != "cpu"):
        ap.error("--cpu-time needs --threads 1 on the CPU")
    torch.set_num_threads(args.threads)
    malloc = "default" if args.default_malloc else steady_malloc()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    shapes = (
        smoke_shapes(args.experts)
        if args.smoke
        else FORWARD_SHAPES
        if args.forward
        else QUICK_SHAPES
        if args.quick
        else DEFAULT_SHAPES
    )
    shapes = [s for s in shapes if args.filter in s.label()]
    if not shapes:
        ap.error(f"--filter {args.filter!r} matches no shape")
    mode = "forward only (inference mode)" if args.forward else "forward + backward"
    target = 1.3 if args.forward else 1.5 if args.smoke else None
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"CondConv2d, {mode}: {len(shapes)} shapes, {args.experts} experts, {args.rounds} interleaved rounds"
    )
    print(
        f"device {device.type} ({name}), torch {torch.__version__}, {args.threads} threads, "
        f"{os.cpu_count()} cores, timer {'thread CPU time' if args.cpu_time else 'wall'}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"malloc {malloc}; input {'channels-last' if args.channels_last else 'NCHW'}"
        + ("; every variant followed by BN, ReLU, 1x1 conv" if args.next_layer else "")
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (
            False  # to check 1e-4
        )

    start = time.perf_counter()
    rows, everything = [], []
    for s in shapes:
        case = Case(s, args.experts, device, args.forward, args.channels_last, args.next_layer)
        case.verify()
        ms = measure(
            case,
            args.rounds,
            args.min_run_time,
            time.thread_time if args.cpu_time else time.perf_counter,
            args.threads,
        )
        everything += ms.values()
        med = {n: m.median * 1e3 for n, m in ms.items()}
        rows.append((s, case.auto_impl, med))
    benchmark.Compare(everything).print()

    print(f"== ratios (medians){'' if target is None else f'; target auto/floor <= {target}'}")
    print(
        f"   {'shape':<34} {'auto runs':>9} {'auto/floor':>10} {'auto/static':>11} {'naive/auto':>10}  fastest"
    )
    ratios = []
    for s, impl, med in rows:
        timed = {n: med[n] for n in s.impls()}
        fastest = min(timed, key=timed.get)
        ratio = med["auto"] / med["floor"]
        ratios.append(ratio)
        flag = "" if target is None or ratio <= target else "  over"
        print(
            f"   {s.label():<34} {impl:>9} {ratio:>10.2f} {med['auto'] / med['static']:>11.2f} "
            f"{med['naive'] / med['auto']:>10.1f}  {fastest}{'' if fastest == impl else ' (auto: ' + impl + ')'}{flag}"
        )
    worst = max(ratios)
    print(
        f"   auto/floor: median {statistics.median(ratios):.2f}, max {worst:.2f}"
        + (
            ""
            if target is None
            else f" (every shape <= {target}: {'yes' if worst <= target else 'no'})"
        )
    )
    print(
        f"correctness: every execution and naive agree to 1e-4 on all {len(shapes)} shapes; "
        f"{time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.1f} at the end"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
