"""Inference latency of the paper's CondConv placements against their backbones.

``ccsearch latency`` on each shipped backbone with the paper's CondConv design, batch 1
and 32 at 224px: both models timed interleaved in one run, so read the ratios (latency
and MADDs side by side), not the milliseconds, on a noisy machine.
Run: python benchmarks/bench_latency.py [--batch 1,32] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

from ccsearch.arch import get_backbone
from ccsearch.latency import measure_latency

# The paper's designs (Yang et al. 2019), as ccsearch's block groups count them.
PAPER_DESIGNS = {
    "MnasNet-A1, 8 experts, groups 6-7": ("mnasnet_a1", 1.0, [6, 7], 8),
    "MobileNetV1 0.25x, 32 experts, all": ("mobilenet_v1", 0.25, "all", 32),
    "MobileNetV2 1.0, 8 experts, groups 5-7": ("mobilenet_v2", 1.0, [5, 6, 7], 8),
    "EfficientNet-B0, 8 experts, groups 5-7": ("efficientnet_b0", 1.0, [5, 6, 7], 8),
    "ResNet-50, 8 experts, all": ("resnet50", 1.0, "all", 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing block")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch.split(",")]
    print(f"torch {torch.__version__}, {args.device}, threads {torch.get_num_threads()}, 224px")
    print(f"{'design':<42} {'batch':>5} {'model ms':>9} {'backbone ms':>11} {'latency':>8} {'MADDs':>7}")
    for title, (name, width, groups, experts) in PAPER_DESIGNS.items():
        base = get_backbone(name, width)
        groups = list(range(1, len(base.groups) + 1)) if groups == "all" else groups
        spec = base.with_condconv(groups, experts, "sigmoid")
        for r in measure_latency(spec, batches, args.device, min_run_time=args.min_run_time):
            print(f"{title:<42} {r.batch:>5} {r.model_ms:>9.2f} {r.baseline_ms:>11.2f} "
                  f"{r.ratio:>7.2f}x {r.madds_ratio:>6.3f}x", flush=True)


if __name__ == "__main__":
    main()
