"""Benchmark: CondConv2d forward+backward against its static conv, its floor and naive MoE.

Run ``python benchmarks/bench_condconv.py`` (``--quick`` for a short run, ``--device``,
``--experts``, ``--repeats``, ``--filter``).  For every mobile-sized shape it times, side
by side and interleaved within each repeat (medians over repeats; the order of the
variants rotates from one repeat to the next), one forward+backward of ``loss =
out.sum()`` (gradients for the weights and the routing weights; for the input too with
``--input-grad``) of:

``static``   ``nn.Conv2d`` of the same shape;
``floor``    the static conv plus the kernel-mixing matmul ``[B, E] @ [E, P]`` (forward and
             backward): what CondConv cannot avoid, since it writes one kernel per example;
``conv``     ``CondConv2d(impl="conv")``: mixing + one grouped conv over the batch;
``bmm``      ``CondConv2d(impl="bmm")``: mixing + one batched matmul (1x1, groups=1 only);
``experts``  ``CondConv2d(impl="experts")`` where the layer has it: all experts as one
             conv, outputs mixed (timed on 1x1 layers with tiny output maps only);
``auto``     ``CondConv2d(impl="auto")``: what users get;
``naive``    mixture of experts: ``E`` separate convolutions weighted by routing, summed.

The CondConv layers run with ``routing=None`` and a fixed ``[B, E]`` routing tensor that
requires grad, so the layer itself is timed (not its routing function).  Before timing,
every shape checks that all CondConv executions and naive agree (outputs to 1e-4,
gradients to 1e-4 relative), so the benchmark cannot time a wrong computation.
``d loss / d out`` (all ones) is handed to backward as a dense tensor, as a network's
batch norm would; ``--expanded-grad`` hands autograd's stride-0 ``expand`` instead (CPU
``bmm`` falls off BLAS on it).  How to read the output: README.md next to this file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from ccsearch.layers.cond_conv import CondConv2d  # noqa: E402

VARIANTS = ("static", "floor", "conv", "bmm", "experts", "auto", "naive")
IMPLS = ("conv", "bmm", "experts")  # CondConv2d executions (besides "auto")
SLOW = ("naive", "experts")  # ~E convs each: sampled in the first 3 repeats only
SLOW_REPEATS = 3
EXPERTS_MAX_HW = 4  # "experts" (E experts as one conv, outputs mixed): timed on 1x1 <= 4x4 out


def _layer_has(impl: str) -> bool:
    """Whether this checkout's CondConv2d offers ``impl`` (the layer is still evolving)."""
    try:
        CondConv2d(1, 1, 1, num_experts=1, routing=None, impl=impl)
    except ValueError:
        return False
    return True


def resolved_impl(m: CondConv2d, x: torch.Tensor) -> str:
    """The execution ``m`` runs for ``x`` (``auto`` may decide per input)."""
    choose = getattr(m, "_choose_impl", None)
    return choose(x) if choose is not None else m.impl


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
    def bmm_allowed(self) -> bool:
        return self.k == 1 and self.groups == 1

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * (self.k // 2) - self.k) // self.stride + 1

    @property
    def time_experts(self) -> bool:
        return self.bmm_allowed and self.out_hw <= EXPERTS_MAX_HW and _layer_has("experts")

    def label(self) -> str:
        if self.depthwise:
            layer = f"dw{self.k}x{self.k} {self.cin}"
        else:
            layer = f"{self.k}x{self.k} {self.cin}->{self.cout}"
        return f"{layer} @{self.hw}px s{self.stride} B{self.batch}"


def pw(cin: int, cout: int, hw: int, batch: int, stride: int = 1) -> Shape:
    return Shape(cin, cout, 1, stride, hw, batch)


def dw(ch: int, k: int, hw: int, batch: int, stride: int = 1) -> Shape:
    return Shape(ch, ch, k, stride, hw, batch, depthwise=True)


# Layers of MnasNet-A1 / MobileNetV2 / EfficientNet-B0 at 224px (expansions, projections,
# depthwise).  Batches are chosen so that the default run stays under ~3 minutes on two
# CPU cores: the 56px layers at B=32, the 7-14px layers at B=64-128.
DEFAULT_SHAPES = (
    pw(32, 192, 56, 32),
    pw(96, 576, 14, 64),
    pw(576, 96, 14, 64),
    pw(160, 960, 7, 128),
    pw(320, 1280, 7, 128),
    pw(160, 960, 4, 64),  # proxy task at low resolution (128px input)
    pw(320, 1280, 2, 64),  # proxy task at 64px input
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    """The tensors and the forward+backward steps (one per variant) of one shape."""

    def __init__(
        self,
        s: Shape,
        experts: int,
        device: torch.device,
        input_grad: bool = False,
        expanded_grad: bool = False,
    ):
        self.shape = s
        pad = s.k // 2
        self.x = torch.randn(s.batch, s.cin, s.hw, s.hw, device=device, requires_grad=input_grad)
        # Fixed routing weights in (0, 1) like the paper's sigmoid routing; a leaf that
        # requires grad, so backward runs through the mixing into the routing too.
        self.r = torch.rand(s.batch, experts, device=device).requires_grad_()
        extra = [self.x] if input_grad else []

        def make(impl: str) -> CondConv2d:
            return CondConv2d(
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

        self.cc = {"conv": make("conv")}
        if s.bmm_allowed:
            self.cc["bmm"] = make("bmm")
        if s.time_experts:
            self.cc["experts"] = make("experts")
        self.cc["auto"] = make("auto")
        for m in self.cc.values():  # same experts everywhere, so outputs can be compared
            m.load_state_dict(self.cc["conv"].state_dict())
        self.auto_impl = resolved_impl(self.cc["auto"], self.x)

        self.static = nn.Conv2d(s.cin, s.cout, s.k, s.stride, pad, groups=s.groups, bias=False)
        self.static.to(device)
        # The floor's mixing: its own [E, P] experts and a dense gradient for the mixed
        # kernels (what the conv's weight-gradient would hand back).
        self.floor_experts = nn.Parameter(self.cc["conv"].weight.detach().clone())
        p = self.floor_experts.shape[1]
        self.floor_kgrad = torch.randn(s.batch, p, device=device) / math.sqrt(p)
        self.naive_experts = self.cc["conv"].weight  # naive shares conv's experts

        # d(out.sum())/d(out) is all ones.  Autograd would hand it on as a stride-0
        # ``expand`` of a scalar; a network hands a dense gradient (from batch norm), and
        # CPU ``bmm`` with a stride-0 operand falls off BLAS (~25x slower), so by default
        # the ones are dense; ``--expanded-grad`` gives autograd's literal out.sum().
        out_shape = (s.batch, s.cout, s.out_hw, s.out_hw)
        if expanded_grad:
            self.ones = torch.ones((), device=device).expand(out_shape)
        else:
            self.ones = torch.ones(out_shape, device=device)
        cc_inputs = {name: [m.weight, self.r, *extra] for name, m in self.cc.items()}
        self.steps: dict[str, Callable[[], object]] = {
            "static": lambda: self.backward(self.static(self.x), [self.static.weight, *extra]),
            "floor": lambda: self.floor_step(extra),
            **{
                name: (lambda m=m, inputs=cc_inputs[name]: self.backward(m(self.x, self.r), inputs))
                for name, m in self.cc.items()
            },
            "naive": lambda: self.backward(
                self.naive(self.x), [self.naive_experts, self.r, *extra]
            ),
        }

    def backward(self, out: torch.Tensor, inputs: list[torch.Tensor]) -> object:
        """Gradients of ``out.sum()`` for ``inputs`` (not accumulated into ``.grad``)."""
        return torch.autograd.grad(out, inputs, self.ones)

    def floor_step(self, extra: list[torch.Tensor]) -> object:
        out = self.static(self.x)
        kernels = self.r @ self.floor_experts  # [B, E] @ [E, P] -> [B, P]
        return torch.autograd.grad(
            [out, kernels],
            [self.static.weight, self.floor_experts, self.r, *extra],
            [self.ones, self.floor_kgrad],
        )

    def naive(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture of experts: ``sum_e r[:, e] * conv(x, W_e)``, E separate convolutions."""
        m, b = self.cc["conv"], x.shape[0]
        kernels = self.naive_experts.view(m.num_experts, *m.weight_shape)  # [E, out, in/g, k, k]
        out = None
        for e in range(m.num_experts):
            y = F.conv2d(x, kernels[e], None, m.stride, m.padding, m.dilation, m.groups)
            y = y * self.r[:, e].view(b, 1, 1, 1)
            out = y if out is None else out + y
        return out

    def verify(self) -> None:
        """Outputs of every CondConv execution and naive agree to 1e-4; gradients too."""
        ref_out, ref_grads = None, None
        names = [*self.cc, "naive"]
        for name in names:
            if name == "naive":
                out, weight = self.naive(self.x), self.naive_experts
            else:
                out, weight = self.cc[name](self.x, self.r), self.cc[name].weight
            grads = self.backward(out, [weight, self.r])
            if ref_out is None:
                ref_out, ref_grads = out.detach(), grads
                continue
            err = (out - ref_out).abs().max().item()
            tol = 1e-4 * max(1.0, ref_out.abs().max().item())
            assert err <= tol, f"{self.shape.label()}: {name} output differs from conv by {err:.2e}"
            for g, ref in zip(grads, ref_grads, strict=True):
                gerr = (g - ref).abs().max().item() / max(1.0, ref.abs().max().item())
                assert gerr <= 1e-4, (
                    f"{self.shape.label()}: {name} gradient differs from conv by {gerr:.2e} (rel)"
                )


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full fp32 on CUDA for the correctness check (TF32 would miss 1e-4)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def time_case(case: Case, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Per variant, ``repeats`` samples (s per step), variants interleaved in every repeat."""
    names = list(case.steps)
    for name in ("static", "floor"):  # warm-up; verify() has run the others once
        case.steps[name]()
    sync(device)
    # Steps of a few ms are timed as a loop so that one sample lasts >= 5 ms (GPU).
    t0 = time.perf_counter()
    case.steps["static"]()
    sync(device)
    inner = max(1, min(100, math.ceil(0.005 / max(time.perf_counter() - t0, 1e-6))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                if name in SLOW and rep >= SLOW_REPEATS:
                    continue  # ~10x the others: a few samples pin naive/auto well enough
                step = case.steps[name]
                sync(device)
                t0 = time.perf_counter()
                for _ in range(inner):
                    step()
                sync(device)
                samples[name].append((time.perf_counter() - t0) / inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def fmt_ratio(v: float | None) -> str:
    return "   n/a" if v is None else f"{v:6.2f}"


def ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None else num / den


def report_case(
    case: Case, samples: dict[str, list[float]], seconds: float
) -> tuple[dict[str, float], dict[str, float | None]]:
    ms = {n: statistics.median(v) * 1e3 for n, v in samples.items()}
    s = case.shape
    print(f"\n== {s.label()}  ({s.kind}; auto -> {case.auto_impl}; {seconds:.1f} s incl. check)")
    print(f"   {'variant':<8} {'median ms':>10} {'min ms':>9} {'spread':>7} {'n':>2}  x static")
    for name in VARIANTS:
        if name not in samples:
            why = {
                "bmm": "1x1, groups=1 only",
                "experts": f"timed on 1x1 with output <= {EXPERTS_MAX_HW}x{EXPERTS_MAX_HW}",
            }
            print(f"   {name:<8} {'n/a':>10}  ({why.get(name, '')})")
            continue
        v = [t * 1e3 for t in samples[name]]
        q = statistics.quantiles(v, n=4, method="inclusive") if len(v) >= 2 else [v[0], v[0], v[0]]
        spread = (q[2] - q[0]) / ms[name] * 100
        print(
            f"   {name:<8} {ms[name]:10.2f} {min(v):9.2f} {spread:6.0f}% {len(v):2d}"
            f"  {ms[name] / ms['static']:7.2f}"
        )
    ratios = {
        "auto/static": ratio(ms["auto"], ms["static"]),
        "auto/floor": ratio(ms["auto"], ms["floor"]),
        "naive/auto": ratio(ms["naive"], ms["auto"]),
        "bmm/conv": ratio(ms.get("bmm"), ms["conv"]),
    }
    print("   " + "  ".join(f"{k} {fmt_ratio(v).strip()}" for k, v in ratios.items()))
    twin = case.auto_impl
    if twin in ms:
        ratios["noise"] = noise = abs(ms["auto"] / ms[twin] - 1)
        print(f"   noise: auto and {twin} run the same code and differ by {noise:.0%}")
    else:
        ratios["noise"] = None
    return ms, ratios


def median_of(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summary(results: list[tuple[Shape, str, dict[str, float], dict[str, float | None]]]) -> None:
    keys = ("auto/static", "auto/floor", "naive/auto", "bmm/conv")
    print("\n== all shapes (median ms; ratios)")
    head = f"   {'shape':<36} {'static':>8} {'floor':>8} {'auto':>8} {'impl':>7}"
    print(head + "".join(f" {k:>11}" for k in keys))
    for s, impl, ms, r in results:
        row = (
            f"   {s.label():<36} {ms['static']:8.2f} {ms['floor']:8.2f} {ms['auto']:8.2f} {impl:>7}"
        )
        print(row + "".join(f" {fmt_ratio(r[k]):>11}" for k in keys))

    print("\n== medians across shapes")
    groups = {"all": results}
    for kind in ("1x1", "depthwise"):
        groups[kind] = [res for res in results if res[0].kind == kind]
    print(f"   {'layers':<10} {'n':>3}" + "".join(f" {k:>11}" for k in keys))
    for gname, rows in groups.items():
        if not rows:
            continue
        meds = [median_of([r[k] for _, _, _, r in rows]) for k in keys]
        print(f"   {gname:<10} {len(rows):>3}" + "".join(f" {fmt_ratio(m):>11}" for m in meds))
    overall = median_of([r["auto/static"] for _, _, _, r in results])
    if overall is not None:
        verdict = "yes" if overall <= 1.3 else "no"
        print(f"   median auto/static {overall:.2f} <= 1.3: {verdict}")
    noise = median_of([r["noise"] for _, _, _, r in results])
    print(f"   run noise (auto vs the same impl, median over shapes): {noise:.0%}")

    print("\n== fastest CondConv impl per layer kind (and whether auto picked it)")
    for kind in ("1x1", "depthwise"):
        rows = [res for res in results if res[0].kind == kind]
        if not rows:
            continue
        wins: dict[str, int] = {}
        misses = []
        for shape, impl, ms, _ in rows:
            timed = {n: ms[n] for n in IMPLS if n in ms}
            best = min(timed, key=timed.get)
            wins[best] = wins.get(best, 0) + 1
            if impl != best and impl in timed:
                misses.append(
                    f"{shape.label()}: auto runs {impl}, {timed[impl] / timed[best]:.2f}x {best}"
                )
        tally = ", ".join(f"{n} fastest on {c}/{len(rows)}" for n, c in sorted(wins.items()))
        only = "" if any(res[0].bmm_allowed for res in rows) else " (only conv allowed)"
        picks = "/".join(sorted({impl for _, impl, _, _ in rows}))
        hits = len(rows) - len(misses)
        print(f"   {kind:<10} {tally}{only}; auto ran {picks}, the fastest on {hits}/{len(rows)}")
        for miss in misses:
            print(f"      {miss}")


def load_avg() -> str:
    """The 1-minute load average and the core count, where the OS tells them."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except (AttributeError, OSError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 smaller shapes, 3 repeats (< 40 s)")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), default=default_device, help="default: %(default)s"
    )
    ap.add_argument("--experts", type=int, default=8, help="experts per layer (default 8)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="samples per variant (default 5, quick 3)"
    )
    ap.add_argument("--input-grad", action="store_true", help="also back-propagate to the input")
    ap.add_argument(
        "--expanded-grad",
        action="store_true",
        help="hand backward autograd's stride-0 ones of out.sum() instead of dense ones",
    )
    ap.add_argument("--filter", default="", help="only shapes whose label contains this text")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    if args.experts < 1:
        ap.error("--experts must be >= 1")
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1:
        ap.error("--repeats must be >= 1")
    device = torch.device(args.device)
    shapes = [
        s for s in (QUICK_SHAPES if args.quick else DEFAULT_SHAPES) if args.filter in s.label()
    ]
    if not shapes:
        ap.error(f"--filter {args.filter!r} matches no shape")
    torch.manual_seed(args.seed)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print("CondConv2d benchmark: forward+backward, loss = out.sum()")
    print(f"device  {device.type} ({dev_name or platform.machine()})")
    print(f"torch   {torch.__version__}  python {platform.python_version()}")
    print(
        f"threads torch.get_num_threads()={torch.get_num_threads()} "
        f"interop={torch.get_num_interop_threads()} os.cpu_count()={os.cpu_count()}"
    )
    env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
    env_set = [f"{k}={os.environ[k]}" for k in (*env, "LD_PRELOAD") if k in os.environ]
    print(f"env     {' '.join(env_set) or 'none of ' + ', '.join(env) + ' set'}")
    grads = "weights + routing" + (" + input" if args.input_grad else "")
    grads += ", d/d(out) = " + ("stride-0 expand" if args.expanded_grad else "dense ones")
    print(f"experts {args.experts}  repeats {repeats} (interleaved, median)  grads: {grads}")
    print(f"shapes  {len(shapes)}{' (quick)' if args.quick else ''}")
    print(f"load    {load_avg()} at start (other processes make OpenMP threads wait)")

    start = time.perf_counter()
    results = []
    for s in shapes:
        t_shape = time.perf_counter()
        case = Case(s, args.experts, device, args.input_grad, args.expanded_grad)
        with no_tf32():
            case.verify()
        samples = time_case(case, repeats, device)
        ms, ratios = report_case(case, samples, time.perf_counter() - t_shape)
        results.append((s, case.auto_impl, ms, ratios))
        del case
        gc.collect()
    summary(results)
    print(f"\ncorrectness: every CondConv impl and naive agree to 1e-4 on all {len(shapes)} shapes")
    print(f"total {time.perf_counter() - start:.0f} s; load {load_avg()} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
