"""Benchmark: one training step of a smoke-proxy candidate, as shipped and without its CPU paths.

Run ``python benchmarks/bench_smoke_step.py`` (``--proxy``, ``--designs``, ``--rounds``,
``--threads``).  Per design (the baseline MnasNet-A1, the paper's CondConv in groups 6-7,
CondConv in every group) it times forward + backward + optimizer step on one random
batch of the proxy's size and resolution, on the proxy's reduced model, in four variants:

``shipped``   the model as ccsearch builds it: static convolutions are
              ``ccsearch.layers.Conv2d`` (pointwise and depthwise kernels on 1-pixel
              outputs run as a matmul / per-channel scalings) and SGD is ``fused``;
``crop-only`` the same weights, static convolutions only cropped to the taps that meet
              the image, then ``F.conv2d`` (oneDNN; ``Conv2d`` before 2026-12-03);
``nn.Conv2d`` the same weights with every static ``Conv2d`` turned back into
              ``torch.nn.Conv2d`` (oneDNN everywhere, no tiny-map crop);
``sgd-loop``  the shipped model with ``torch.optim.SGD``'s default per-parameter loop.

Variants are interleaved: each of ``--rounds`` rounds gives every variant a short
``torch.utils.benchmark`` ``blocked_autorange`` in rotating order, and the medians over
rounds are compared, so the machine's load hits all alike.  It prints ms per step and
``shipped / variant`` (below 1: the shipped path is faster).  Before timing, the
``nn.Conv2d`` copy must give the shipped model's loss in eval mode (1e-5), so nothing wrong is timed.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from ccsearch.arch import build_model, get_backbone  # noqa: E402
from ccsearch.layers import Conv2d  # noqa: E402
from ccsearch.layers.cond_conv import crop_to_image  # noqa: E402
from ccsearch.train.proxy import get_proxy  # noqa: E402
from ccsearch.train.trainer import _optimizer, apply_recipe  # noqa: E402

DESIGNS = {"baseline": [], "paper": [6, 7], "condconv-all": [1, 2, 3, 4, 5, 6, 7]}


class CropOnlyConv2d(nn.Conv2d):
    """``Conv2d`` as it was: the tiny-map crop, then oneDNN for every shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, padding = crop_to_image(self.weight, self.padding, self.dilation, x.shape[-2:])
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)


def with_conv_class(model: nn.Module, cls: type) -> nn.Module:
    """A copy of ``model`` whose static ``Conv2d`` modules run ``cls.forward``."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if type(module) is Conv2d:
            module.__class__ = cls
    return model


def variants(groups: list[int], proxy) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    spec = get_backbone("mnasnet_a1")
    if groups:
        spec = spec.with_condconv(groups)
    torch.manual_seed(0)
    shipped = build_model(proxy.adapt(spec, 20))
    apply_recipe(shipped, proxy)
    crop_only, plain = with_conv_class(shipped, CropOnlyConv2d), with_conv_class(shipped, nn.Conv2d)
    looped = copy.deepcopy(shipped)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"], "lr": g["lr"]}
              for g in _optimizer(looped, proxy).param_groups]  # the trainer's groups
    loop = torch.optim.SGD(groups, lr=proxy.lr, momentum=proxy.momentum, nesterov=True,
                           foreach=False)  # fmt: skip
    return {
        "shipped": (shipped, _optimizer(shipped, proxy)),
        "crop-only": (crop_only, _optimizer(crop_only, proxy)),
        "nn.Conv2d": (plain, _optimizer(plain, proxy)),
        "sgd-loop": (looped, loop),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", default="smoke")
    ap.add_argument("--designs", default=",".join(DESIGNS), help=f"of {', '.join(DESIGNS)}")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    proxy = get_proxy(args.proxy)
    size = proxy.resolution
    x = torch.randn(proxy.batch_size, 3, size, size)
    y = torch.randint(0, 20, (proxy.batch_size,))
    print(f"smoke step: proxy {proxy.name}, batch {proxy.batch_size} at {size}px, width "
          f"{proxy.width}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; median of {args.rounds} "
          f"interleaved rounds")  # fmt: skip
    names = ["shipped", "crop-only", "nn.Conv2d", "sgd-loop"]
    print(f"{'design':14s}" + "".join(f"{n:>11s}" for n in names) + "   shipped/"
          + "  shipped/".join(names[1:]) + "   (ms per step)")  # fmt: skip
    for name in args.designs.split(","):
        runs = variants(DESIGNS[name], proxy)

        def step(model, optimizer):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss

        with torch.no_grad():  # in eval mode: no dropout draws
            losses = [F.cross_entropy(model.eval()(x), y) for model, _ in runs.values()]
        for loss in losses[1:]:
            torch.testing.assert_close(loss, losses[0], atol=1e-5, rtol=1e-5)
        for model, _ in runs.values():
            model.train()
        times: dict[str, list[float]] = {k: [] for k in runs}
        order = list(runs)
        for r in range(args.rounds):
            for key in order[r % len(order) :] + order[: r % len(order)]:
                timer = benchmark.Timer("step(*run)", globals={"step": step, "run": runs[key]})
                times[key].append(timer.blocked_autorange(min_run_time=0.3).median)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratios = [ms["shipped"] / ms[n] for n in names[1:]]
        print(f"{name:14s}" + "".join(f"{ms[n]:11.1f}" for n in names)
              + "".join(f"{r:{len(n) + 10}.2f}" for r, n in zip(ratios, names[1:], strict=True)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
