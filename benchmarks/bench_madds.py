"""How long counting one candidate's MADDs takes, per backbone.

``count_madds(spec)`` (what the search calls: a weightless build plus the fvcore trace)
beside ``build_model(spec)`` alone, the cost of a build with weight initialisation.

The search counts every sampled candidate before deciding whether to train it, so
this is part of the controller's per-trial overhead.  Target: well under a second.
Run: python benchmarks/bench_madds.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ccsearch.arch import BACKBONES, build_model, get_backbone
from ccsearch.madds import count_madds, format_madds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, paper convention, 224px")
    cases = {name: get_backbone(name) for name in BACKBONES}
    cases["mnasnet_a1 + CondConv 6,7 x8"] = get_backbone("mnasnet_a1").with_condconv([6, 7], 8)
    print(f"{'model':<30} {'MADDs':>9} {'count_madds(spec) ms':>21} {'build_model ms':>15}")
    for name, spec in cases.items():
        count_madds(spec)  # warm-up
        builds, counts = [], []
        for _ in range(args.repeats):  # interleaved: the machine's noise hits both alike
            start = time.perf_counter()
            report = count_madds(spec)
            counted = time.perf_counter()
            build_model(spec)
            builds.append(time.perf_counter() - counted)
            counts.append(counted - start)
        c, b = statistics.median(counts) * 1e3, statistics.median(builds) * 1e3
        print(f"{name:<30} {format_madds(report.madds):>9} {c:>21.0f} {b:>15.0f}")


if __name__ == "__main__":
    main()
