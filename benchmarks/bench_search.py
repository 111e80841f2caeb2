"""The search controller's cost and the default sampler's progress.

1. Overhead per trial: sampling + MADD count + storage writes, measured on candidates
   that are over a tiny budget (they do everything but train), beside one real smoke
   training of the default backbone in the same run; printed as a fraction of a trial.
2. The Ray backend's cost per trial (``--ray-trials``): trials that train nothing through
   ``ccsearch run --backend ray``'s driver, against Tune running a trivial function the
   same number of times with the same resources, in one Ray instance.
3. Hypervolume after N trained candidates: the study's sampler (NSGA-II) against random
   search with the same seeds, on the same proxy (objectives: 100 - top-1 and
   MADDs / budget, reference point (100, 1)).

Run: python benchmarks/bench_search.py [--overhead-trials 30] [--ray-trials 20] [--trials 6]
[--seeds 1] [--epochs E]
Part 3 trains 2 x seeds x trials candidates (~15 s each on 2 CPU cores with the smoke
proxy's 4 epochs; --epochs 1 makes them ~4x cheaper): --trials 0 skips it.  NSGA-II's
first generation (population_size = 8 candidates) is random: only N well above 8 can
show the sampler's effect.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from optuna._hypervolume import compute_hypervolume

from ccsearch.arch import get_backbone
from ccsearch.results import pareto_front, trials_table
from ccsearch.search import load_study_config
from ccsearch.search import run as search_run
from ccsearch.search.backends import InProcess
from ccsearch.search.backends.ray_tune import RayOptions, RayTune, _start_ray, _tune_environment
from ccsearch.search.objective import Evaluator
from ccsearch.search.pruners import NoPruner
from ccsearch.search.record import read
from ccsearch.search.recovery import ask
from ccsearch.train import TrainResult, get_proxy, load_proxy_data, train_candidate


def instant_trainer(epochs: int):
    """A trainer that trains nothing: each epoch is reported at once, so a trial's time is
    the controller's alone (sample, count, claim, per-epoch records and checks, tell)."""
    def trainer(spec, seed, on_epoch) -> TrainResult:
        curve: list[float] = []
        for epoch in range(1, epochs + 1):
            curve.append(50.0 + epoch)
            if on_epoch(epoch, curve[-1]):
                break
        return TrainResult(status="ok", top1=curve[-1], curve=curve, epochs=len(curve))

    return trainer


def _timed(evaluator: Evaluator, study, trials: int, trainer=None) -> list[float]:
    """Seconds per trial, ask to tell, for ``trials`` trials."""
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        evaluator.evaluate(ask(study), trainer=trainer)
        times.append(time.perf_counter() - start)
    return times


def overhead(trials: int, workdir: Path) -> None:
    base = load_study_config("mnasnet_a1_325m")
    proxy = get_proxy(base.proxy)
    data = load_proxy_data(proxy)
    measured = {"proxy": proxy.name, "data": data.description, "device": "cpu"}
    # 1. over budget: sample + count + record, never trained; first with the MADD part
    #    cache empty, then warm (a long search's steady state: every part counted once)
    config = replace(base, name="overhead", budget=1_000_000, trials=1, sampler="random")
    search = search_run.create(config, workdir / "overhead")
    evaluator = Evaluator(config, search.space, NoPruner(), proxy.epochs, measured)
    cold = _timed(evaluator, search.study, trials)
    _timed(evaluator, search.study, 3 * trials)  # fills the part cache further
    warm = _timed(evaluator, search.study, trials)
    # 2. trained trials with a trainer that trains nothing: all the controller does
    config = replace(base, name="trained", trials=10 * trials, sampler="random")
    search = search_run.create(config, workdir / "trained")
    evaluator = Evaluator(config, search.space, NoPruner(), proxy.epochs, measured)
    _timed(evaluator, search.study, trials, instant_trainer(proxy.epochs))  # warm-up
    done = [t for t, r in zip(_timed(evaluator, search.study, 2 * trials,
                                     instant_trainer(proxy.epochs)),
                              [read(t) for t in search.study.trials[-2 * trials:]], strict=True)
            if r.trained]
    train = train_candidate(get_backbone("mnasnet_a1"), proxy, data, "cpu").wall_time
    median = statistics.median
    print(f"over-budget trial (sample + count + record): {median(cold) * 1e3:.0f} ms with the "
          f"MADD part cache cold, {median(warm) * 1e3:.0f} ms warm ({trials} trials each)")
    print(f"trained trial, controller only ({proxy.epochs} epochs reported at once): "
          f"{median(done) * 1e3:.0f} ms ({len(done)} trained)")
    print(f"one smoke training of mnasnet_a1: {train:.1f} s -> controller overhead = "
          f"{median(done) / (median(done) + train):.2%} of a trained trial (target < 1%)")


def instant_ray_trial(config: dict, *, proxy_data, proxy, device, threads) -> None:
    """``ray_trial``'s reports, with a trainer that trains nothing."""
    from ray import tune

    result = instant_trainer(proxy.epochs)(None, 0, lambda epoch, top1: False)
    for epoch, top1 in enumerate(result.curve[:-1], 1):
        tune.report({"epoch": epoch, "step": epoch, "epoch_top1": top1, "worker": "bench"})
    tune.report({"epoch": result.epochs, "step": result.epochs, "epoch_top1": result.top1,
                 "worker": "bench", "train_result": json.dumps(result.to_dict())})


def trivial_tune_trial(config: dict) -> None:
    """Ray's own cost: a Tune trial reporting the same epochs, with no driver behind it."""
    from ray import tune

    for epoch in range(1, config["epochs"] + 1):
        tune.report({"epoch": epoch, "epoch_top1": 50.0 + epoch})


def ray_overhead(trials: int, workdir: Path) -> None:
    """Both sides from a started Ray to its shutdown: Tune's setup and teardown included."""
    import ray
    from ray import tune

    base = load_study_config("mnasnet_a1_325m")
    proxy = get_proxy(base.proxy)
    data = load_proxy_data(proxy)
    _start_ray(None)  # as ccsearch starts it
    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # no per-trial result files: fine
    start = time.perf_counter()
    with _tune_environment():
        tune.Tuner(
            tune.with_resources(trivial_tune_trial, {"cpu": 1, "gpu": 0}),
            param_space={"epochs": proxy.epochs},
            tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=2,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name="trivial", storage_path=str(workdir / "trivial"),
                                      verbose=0),
        ).fit()
    ray.shutdown()  # as ``RayTune.run`` ends, so that both sides pay Ray's fixed costs
    trivial = (time.perf_counter() - start) / trials
    config = replace(base, name="ray", trials=trials, sampler="random", pruner="none",
                     references={})
    search = search_run.create(config, workdir / "ray")
    _start_ray(None)
    start = time.perf_counter()
    RayTune(data, RayOptions(cpus_per_trial=1), device="cpu",
            trial_function=instant_ray_trial).run(search)
    ours = (time.perf_counter() - start) / trials
    trained = sum(read(t).trained for t in search.study.trials)
    print(f"Ray, per trial ({trials} trials, {proxy.epochs} epochs reported, 2 at a time): "
          f"a trivial Tune trial {trivial * 1e3:.0f} ms, a ccsearch trial that trains nothing "
          f"{ours * 1e3:.0f} ms ({trained} trained, {len(search.study.trials)} sampled) -> "
          f"ccsearch / Ray = {ours / trivial:.2f} (target <= 2: adds no more than Ray's own)")


def hypervolume(trials: int, seeds: int, epochs: int | None, workdir: Path) -> None:
    base = load_study_config("mnasnet_a1_325m")
    if epochs is not None:  # a cheaper proxy, so that N can exceed NSGA-II's first generation
        proxy = workdir / "proxy.yaml"
        fields = asdict(get_proxy(base.proxy, epochs=epochs))
        proxy.write_text(yaml.safe_dump({**fields, "name": f"{base.proxy}-{epochs}ep"}))
        base = replace(base, proxy=str(proxy))
    print(f"hypervolume: study {base.name}, proxy {get_proxy(base.proxy).name}, "
          f"NSGA-II population {base.population_size}, {trials} trained candidates per study")
    results: dict[str, list[float]] = {"nsga2": [], "random": []}
    for seed in range(seeds):
        for sampler in results:
            config = replace(base, name=f"hv_{sampler}_{seed}", sampler=sampler, seed=seed, trials=trials)
            run = search_run.create(config, workdir / config.name)
            InProcess(device="cpu").run(run)
            front = pareto_front(trials_table(run.study))
            losses = np.array([[100 - a, m / config.budget] for a, m in zip(front["top1"], front["madds"], strict=True)])
            hv = compute_hypervolume(losses, np.array([100.0, 1.0])) if len(losses) else 0.0
            results[sampler].append(hv)
            print(f"seed {seed} {sampler:>6}: hypervolume {hv:.2f} after {trials} trained candidates "
                  f"({len(run.study.trials)} sampled)")
    a, b = statistics.median(results["nsga2"]), statistics.median(results["random"])
    print(f"median hypervolume: nsga2 {a:.2f}, random {b:.2f}, ratio {a / b if b else float('nan'):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overhead-trials", type=int, default=30)
    parser.add_argument("--ray-trials", type=int, default=20, help="0: skip the Ray part")
    parser.add_argument("--trials", type=int, default=6, help="trained candidates per study (0: skip)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, help="proxy epochs for part 2 (default: the study's)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, optuna {optuna.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        overhead(args.overhead_trials, Path(tmp))
        if args.ray_trials:
            ray_overhead(args.ray_trials, Path(tmp))
        if args.trials:
            hypervolume(args.trials, args.seeds, args.epochs, Path(tmp))


if __name__ == "__main__":
    main()
