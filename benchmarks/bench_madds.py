"""How long counting one candidate's MADDs takes: the part cache against a whole-model trace.

``count_madds(spec)`` traces each part of a model (stem, block group, head) with fvcore
once per process and sums cached parts.  For each search space, ``--candidates`` random
candidates (seeded) are counted in the order a search meets them (parts traced as they
first appear: the cold stream), then counted again with every part cached (after warm-up).
In the same run, interleaved with those warm counts, ``--whole`` of them are counted the
way ``count_madds`` did before the cache (a weightless build and one fvcore trace of the
whole model), and the two reports are checked to be equal.

Target: < 20 ms per candidate after warm-up.
Run: python benchmarks/bench_madds.py [--space mnasnet_a1] [--candidates 200] [--whole 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from ccsearch.arch import build_model, spec_digest  # noqa: E402
from ccsearch.config import shipped  # noqa: E402
from ccsearch.madds import count_madds, madds_cache  # noqa: E402
from ccsearch.search.space import load_search_space  # noqa: E402


def whole_model_count(spec):
    """The count as it was made before the part cache: build, then trace the whole model."""
    with torch.device("meta"):
        model = build_model(spec)
    return count_madds(model.to_empty(device="cpu"))


def candidates(space_name: str, n: int, seed: int) -> list:
    space = load_search_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--space", action="append", help="search space (default: every shipped one)"
    )
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--whole", type=int, default=5, help="whole-model traces per space")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, paper convention, 224px")
    print(f"{args.candidates} random candidates per space (seed {args.seed}); ms per candidate\n")
    head = f"{'space':<28} {'distinct':>8} {'parts':>5} {'cold mean':>9} {'warm med':>8} "
    print(head + f"{'whole med':>9} {'whole/warm':>10}")
    warm_all, whole_all = [], []
    for name in args.space or shipped("search_spaces"):
        specs = candidates(name, args.candidates, args.seed)
        before = len(madds_cache())
        cold = []
        for spec in specs:
            start = time.perf_counter()
            count_madds(spec)
            cold.append(time.perf_counter() - start)
        parts = len(madds_cache()) - before
        distinct = list({spec_digest(s): s for s in specs}.values())
        step = max(1, len(distinct) // max(1, args.whole))
        checked = distinct[::step][: args.whole]
        warm, whole = [], []
        for i, spec in enumerate(specs):  # interleaved: the machine's noise hits both alike
            start = time.perf_counter()
            report = count_madds(spec)
            warm.append(time.perf_counter() - start)
            if i < len(checked):
                start = time.perf_counter()
                reference = whole_model_count(checked[i])
                whole.append(time.perf_counter() - start)
                assert count_madds(checked[i]) == reference, f"{name}: cached count differs"
        del report
        warm_all += warm
        whole_all += whole
        print(
            f"{name:<28} {len(distinct):>8} {parts:>5} {statistics.mean(cold) * 1e3:>9.1f} "
            f"{ms(warm):>8.2f} {ms(whole):>9.0f} {ms(whole) / ms(warm):>9.0f}x"
        )
    verdict = "yes" if ms(warm_all) < 20 else "no"
    print(
        f"\nafter warm-up: median {ms(warm_all):.2f} ms per candidate (< 20 ms: {verdict}), "
        f"max {max(warm_all) * 1e3:.2f} ms; a whole-model trace: median {ms(whole_all):.0f} ms"
    )
    print("cached counts equal the whole-model counts on every checked candidate")


if __name__ == "__main__":
    main()
