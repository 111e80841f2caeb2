"""The dashboard of a synthetic 10,000-trial study: time to build it, time to load it.

optuna-dashboard users report it slowing past 10k trials; the target here is under 10 s
for each on 2 CPU cores.  The study is the headline MnasNet-A1 space under 325M, sampled
at random (most candidates are over the budget, as in a real random search) with made-up
accuracies, curves and routing statistics: nothing is trained.  MADDs are exact: a
group's CondConv mixing and routing grow linearly with its experts, so one count per
group gives every candidate's.

By default the study is in memory (``study.add_trials``), so "build" is the dashboard's
own work.  ``--sqlite`` writes it into a real run folder first (Optuna inserts about
45 trials/s there: 10,000 take some 4 minutes; with ``--keep DIR`` a second run reuses it)
and times reading it back too, through ``ccsearch.search.bulk_read`` (one pass of SQL).

Run: python benchmarks/bench_dashboard.py [--trials 10000] [--name default] [--sqlite] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna

from ccsearch.arch import get_backbone
from ccsearch.dashboard import load_dashboard, load_run, write_dashboard
from ccsearch.dashboard.browser import check_page
from ccsearch.dashboard.costs import group_costs
from ccsearch.madds import count_madds
from ccsearch.search import load_study_config
from ccsearch.search import run as search_run
from ccsearch.search.record import KEY, STATE, Stage, Status, TrialRecord


def synthetic_study(trials: int, out: Path | None = None, seed: int = 0) -> optuna.Study:
    """In memory, or (``out``) in a run folder's SQLite storage, as ``ccsearch run`` makes it."""
    config = replace(load_study_config("mnasnet_a1_325m"), name="synthetic", trials=trials)
    if out is not None:
        search = search_run.create(config, out, data="synthetic: no data, made-up accuracies")
    else:
        study = optuna.create_study(study_name=config.name, directions=["maximize", "minimize"])
        study.set_user_attr("config", config.to_dict())
        study.set_user_attr("space", search_run.space_dict(config.space()))
        search = search_run.SearchRun(study, study._storage, config, config.space(), "memory")
    space, rng = search.space, np.random.default_rng(seed)
    base = get_backbone(space.backbone)
    static = count_madds(base).madds
    per_expert = [c.mixing + c.routing for c in group_costs(
        base.with_condconv(list(range(1, len(base.groups) + 1)), experts=1))]
    sampler = optuna.create_study(directions=["maximize", "minimize"],
                                  sampler=optuna.samplers.RandomSampler(seed=seed))
    made = []
    for number in range(trials):
        trial = sampler.ask()
        spec = space.sample(trial)
        experts = [g.experts for g in spec.groups]
        madds = static + sum(e * c for e, c in zip(experts, per_expert, strict=True))
        outcomes = [Status.OK, Status.OK, Status.OK, Status.PRUNED, Status.DIVERGED]
        status = Status.INFEASIBLE if madds > config.budget else outcomes[rng.integers(5)]
        record = TrialRecord(spec=spec.to_dict(), digest=f"{number:012x}", madds=madds,
                             params=0, budget=config.budget, stage=Stage.COMMITTING,
                             status=status, seed=number, device="cpu", proxy="smoke",
                             data="synthetic", worker="bench:0")
        if status != Status.INFEASIBLE:
            quality = 60 + 2 * np.log2(1 + sum(experts)) + rng.normal(0, 3)
            epochs = 4 if status != Status.PRUNED else int(rng.integers(1, 4))
            curve = [float(quality * (1 - 0.5 ** (e + 1))) for e in range(epochs)]
            record.curve, record.epochs = curve, epochs
            record.top1 = curve[-1] if status == Status.OK else None
            record.routing_stats = {str(g): {"bins": [0.0, 1.0],
                                             "hist": rng.integers(0, 500, 20).tolist(),
                                             "near_zero": float(rng.random()),
                                             "active": float(rng.random() * e)}
                                    for g, e in enumerate(experts, start=1) if e}
        record.wall_time = float(rng.random() * 60)
        values = record.values() if STATE[status] == optuna.trial.TrialState.COMPLETE else None
        made.append(optuna.trial.create_trial(
            state=STATE[status], values=values, params=trial.params,
            distributions=trial.distributions, user_attrs={KEY: record.to_dict()}))
    search.study.add_trials(made)
    return search.study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--name", default="default", help="the dashboard to build")
    parser.add_argument("--sqlite", action="store_true", help="in a run folder's SQLite storage")
    parser.add_argument("--keep", type=Path, help="write into this folder and keep it")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if args.sqlite and (folder / "run" / "study.db").exists():  # --keep: insert once
            print(f"reusing the synthetic study in {folder / 'run'}")
        else:
            study = synthetic_study(args.trials, folder / "run" if args.sqlite else None)
            print(f"synthetic study of {args.trials} trials made in "
                  f"{time.perf_counter() - start:.1f} s "
                  f"({'SQLite run folder' if args.sqlite else 'in memory'})")

        start = time.perf_counter()
        if args.sqlite:  # a fresh process's view: nothing cached
            study = search_run.open_folder(folder / "run").study
        run = load_run(study, "synthetic")
        loaded = time.perf_counter() - start
        page = write_dashboard([run], load_dashboard(args.name), folder / "dashboard.html")
        built = time.perf_counter() - start
        print(f"build: {built:.1f} s (of which reading the study {loaded:.1f} s), "
              f"{page.stat().st_size / 1e6:.1f} MB page, {len(run.front)} on the front")

        result = check_page(page)
        empty = [p["id"] for p in result["plots"] if not p["points"]]
        print(f"load in headless Chromium: {result['seconds']:.1f} s with the browser's start "
              f"({result['page_seconds']:.1f} s in the page), "
              f"{len(result['plots'])} plots, JS errors: {result['errors'] or 'none'}"
              + (f", panels without data: {empty}" if empty else ""))


if __name__ == "__main__":
    main()
