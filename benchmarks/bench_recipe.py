"""The proxy trainer's departures from the TF reference recipe, measured on the proxy.

Train MnasNet-A1 and the paper's CondConv design (8 sigmoid experts in groups 6-7) with
the proxy's recipe, with the recipe before TF's batch norm eps (1e-3) and drop-connect
(0.2) became its defaults, and with each remaining departure changed to the reference's
value (batch norm momentum 0.01, no zero-initialised last batch norm in residual
branches), and with the routing functions at a tenth of the learning rate (a departure
measured, not taken), over several seeds, and print the mean top-1 of each, against the
first row.  A choice that costs nothing can be the default; one that costs points on a
few-epoch proxy stays a departure, documented in the README.

Run: python benchmarks/bench_recipe.py [--proxy smoke] [--seeds 3] [--data D]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from ccsearch.arch import get_backbone
from ccsearch.train import get_proxy, load_proxy_data, train_candidate

CHANGES = {  # from the recipe before the change to the reference's value of each field
    "recipe before (eps 1e-5, no drop-connect)": {"bn_eps": 1e-5, "drop_connect": 0.0},
    "proxy's recipe now": {},
    "BN momentum 0.01 (TF decay 0.99)": {"bn_momentum": 0.01},
    "last BN of residual branches at 1": {"zero_init_last_bn": False},
    "routing at a tenth of the LR (routing_lr 0.1)": {"routing_lr": 0.1},
    "TF's whole recipe": {"bn_momentum": 0.01, "bn_eps": 1e-3, "drop_connect": 0.2,
                          "zero_init_last_bn": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="smoke")
    parser.add_argument("--data")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    proxy = get_proxy(args.proxy)
    data = load_proxy_data(proxy, args.data)
    models = {"MnasNet-A1": get_backbone("mnasnet_a1"),
              "paper (6-7, 8 sigmoid)": get_backbone("mnasnet_a1").with_condconv(
                  [6, 7], experts=8, routing="sigmoid")}
    print(f"proxy {proxy.name} on {data.description}; mean top-1 over seeds "
          f"0..{args.seeds - 1} (std)")
    print(f"{'recipe':44s}" + "".join(f"{name:>26s}" for name in models) + "   seconds")
    base: dict[str, float] = {}
    for label, change in CHANGES.items():
        recipe = replace(proxy, **change)
        start, cells = time.perf_counter(), []
        for name, spec in models.items():
            top1 = [train_candidate(spec, recipe, data, "cpu", seed=s).top1
                    for s in range(args.seeds)]
            mean = statistics.fmean(top1)
            base.setdefault(name, mean)
            spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
            cells.append(f"{mean:5.1f}% ({spread:4.1f}) {mean - base[name]:+5.1f}")
        print(f"{label:44s}" + "".join(f"{c:>26s}" for c in cells)
              + f"   {time.perf_counter() - start:5.0f}")


if __name__ == "__main__":
    main()
