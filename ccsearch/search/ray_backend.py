"""The Ray Tune backend (``ccsearch run --backend ray``): same study, same records.

- Ray Tune's ``OptunaSearch`` asks the study's own sampler (NSGA-II, TPE, random or grid)
  for each architecture, on the driver, in the study's own Optuna storage;
- a Ray trial runs ccsearch's ``Objective`` on that Optuna trial, in a worker with its
  ``--cpus-per-trial`` / ``--gpus-per-trial`` (fractions share a GPU), so MADD counting,
  the budget, duplicates and every record are exactly those of the Optuna backend;
- Ray's ASHA scheduler stops candidates whose per-epoch accuracy falls behind (instead of
  the study's own curve-based pruner) and ``FailureConfig`` retries a trial whose worker
  died;
- the experiment ends when the study has its trained candidates.

Everything lands in the Optuna storage, so ``--resume``, ``ccsearch worker`` and results
do not care which backend ran a trial.  A ``--resume`` starts a new Tuner on the same
study rather than restoring Ray's experiment folder: the storage is the source of truth.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ccsearch.data import ProxyData
from ccsearch.errors import UserError
from ccsearch.search.controller import (
    MAX_TRIALS_FACTOR,
    SearchRun,
    join_study,
    make_objective,
    progress_bar,
    trained_count,
    update_bar,
)
from ccsearch.search.objective import TrialFailed, is_training
from ccsearch.search.space import SearchSpace
from ccsearch.search.storage import open_storage
from ccsearch.train import get_proxy

TRIAL_ID = "optuna_trial_id"  # how a Ray trial finds its Optuna trial

# Set before Ray starts so its workers inherit them: trials keep the working directory
# (relative data paths stay valid), Tune writes no per-trial CSV/JSON/TensorBoard logs,
# and accepts the per-epoch reports, which carry no final objective values.
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start Ray on this machine; "auto" or HOST:PORT: join
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    max_failures: int = 2  # retries of a trial whose worker process died

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")


class SampleArchitecture:
    """OptunaSearch's define-by-run space: the study's space, plus the trial id for the
    Ray trial (a class, not a closure, so Tune can pickle the searcher)."""

    def __init__(self, space: SearchSpace, suggest_all: bool) -> None:
        self.space = space
        self.suggest_all = suggest_all

    def __call__(self, trial: Any) -> dict[str, Any]:
        self.space.sample(trial, suggest_all=self.suggest_all)
        return {TRIAL_ID: trial.ot_trial._trial_id}


def _study_search_class():
    """Built on first use, so importing ccsearch does not import Ray."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class _StudySearch(OptunaSearch):
        """OptunaSearch that stops asking once the study has its trained candidates, and
        ends each Optuna trial the way the Objective recorded it.

        The final report of a Ray trial carries the Objective's ``status``; a trial with
        no such report was stopped by ASHA or crashed, and is recorded here.
        """

        def __init__(self, *args: Any, trials_wanted: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.trials_wanted = trials_wanted

        def suggest(self, trial_id: str):
            trials = self._ot_study.get_trials(deepcopy=False)
            if trained_count(trials) >= self.trials_wanted:
                return Searcher.FINISHED  # running trials finish; no new ones start
            if trained_count(trials) + sum(map(is_training, trials)) >= self.trials_wanted:
                return None  # the last candidates are training: ask again later
            return super().suggest(trial_id)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            state, values = _outcome(self._ot_study, ot_trial._trial_id, result or {}, error)
            # The grid sampler calls study.stop() when done, which only works in optimize().
            with contextlib.suppress(RuntimeError):
                self._ot_study.tell(ot_trial, values, state=state)
            self._completed_trials.add(trial_id)

        def finish_unreported(self) -> None:
            """Close Optuna trials whose Ray trial never reported its end (Tune stopped)."""
            for trial_id in list(self._ot_trials):
                self.on_trial_complete(trial_id, {}, error=False)

        def save(self, checkpoint_path: str) -> None:  # the Optuna storage is the checkpoint
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

    return _StudySearch


def _outcome(
    study: optuna.Study, trial_id: int, result: dict, error: bool
) -> tuple[optuna.trial.TrialState, list[float] | None]:
    """How a Ray trial ends in the study, from its final report or, failing that, from
    what it recorded in the storage before it stopped."""
    states = optuna.trial.TrialState
    if "status" in result:  # the Objective finished and recorded everything itself
        if "top1" in result:
            return states.COMPLETE, [result["top1"], result["madds"]]
        return (states.FAIL if result["status"] == "failed" else states.PRUNED), None
    frozen = study._storage.get_trial(trial_id)  # fresh: the worker wrote its attributes
    attrs = frozen.user_attrs
    recorded = attrs.get("status")
    if not error and recorded in ("ok", "diverged", "infeasible"):  # finished, report lost
        top1 = attrs.get("top1") if recorded == "ok" else 0.0
        return states.COMPLETE, [float(top1 or 0.0), float(attrs["madds"])]
    if not error and recorded is not None:
        return (states.FAIL if recorded == "failed" else states.PRUNED), None
    curve = attrs.get("curve") or []
    if error:
        status, reason = "failed", "its Ray trial failed (see the Ray logs of this run)"
    elif is_training(frozen) and curve and "epoch" in result:
        status, reason = "pruned", f"ASHA stopped it after epoch {len(curve)}"
    else:
        status, reason = "interrupted", "Ray stopped it before it finished"  # --resume retries
    set_attr = functools.partial(study._storage.set_trial_user_attr, trial_id)
    set_attr("status", status)
    set_attr("reason", reason)
    set_attr("wall_time", result.get("time_total_s", 0.0))
    if curve:
        set_attr("top1", curve[-1])
        set_attr("train_time", result.get("time_total_s", 0.0))
    return (states.PRUNED if status == "pruned" else states.FAIL), None


def ray_trial(
    config: dict,
    *,
    storage_url: str,
    study_name: str,
    proxy_data: ProxyData,
    device: str,
    threads: int,
) -> None:
    """One Ray trial: the Objective on the Optuna trial the searcher asked for."""
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    run = join_study(storage_url, study_name, heartbeats=False)
    trial = optuna.Trial(run.study, config[TRIAL_ID])

    epochs = get_proxy(run.config.proxy).epochs

    def report(epoch: int, top1: float) -> None:
        if epoch < epochs:  # the last epoch's result comes with the final report
            tune.report({"epoch": epoch, "epoch_top1": top1})

    objective = make_objective(run, proxy_data, device, report=report, pruner="none")
    try:
        top1, madds = objective(trial)
        tune.report({"status": trial.user_attrs["status"], "top1": top1, "madds": madds})
    except (optuna.TrialPruned, TrialFailed):
        tune.report({"status": trial.user_attrs["status"]})


def optimize_with_ray(
    run: SearchRun,
    proxy_data: ProxyData,
    options: RayOptions,
    *,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """Run the study's remaining trials as Ray Tune trials until it has its candidates."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    config = run.config
    if trained_count(run.study.get_trials(deepcopy=False)) >= config.trials:
        return
    _start_ray(options.address)
    # Tune warns about the per-trial result files we switched off; our records are in Optuna.
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    try:
        resources = ray.cluster_resources()
        gpus = options.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        if gpus > resources.get("GPU", 0):
            raise UserError(
                f"--gpus-per-trial {gpus:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs"
            )
        if options.cpus_per_trial > resources.get("CPU", 0):
            raise UserError(
                f"--cpus-per-trial {options.cpus_per_trial:g}: the Ray cluster has "
                f"{resources.get('CPU', 0):g} CPUs"
            )
        fits = int(resources.get("CPU", 1) // options.cpus_per_trial)
        if gpus > 0:
            fits = min(fits, int(resources["GPU"] // gpus))
        if device.startswith("cuda") and gpus == 0:
            raise UserError(
                f"--device {device} needs --gpus-per-trial > 0 (Ray hides GPUs otherwise)"
            )
        trial_device = device if device != "auto" else ("cuda" if gpus > 0 else "cpu")

        space = SearchSpace(**run.study.user_attrs["space"])
        storage = open_storage(run.storage_url, heartbeats=False)
        searcher = _study_search_class()(
            space=SampleArchitecture(space, suggest_all=config.sampler == "grid"),
            metric=["top1", "madds"],
            mode=["max", "min"],
            sampler=config.make_sampler(space, stream=len(run.study.trials)),
            study_name=config.name,
            storage=storage,
            trials_wanted=config.trials,
        )
        if config.pruner == "none":
            scheduler = FIFOScheduler()
        else:  # ASHA on the per-epoch accuracy, rungs at epochs 1, 2, 4, ...
            scheduler = ASHAScheduler(
                time_attr="epoch",
                metric="epoch_top1",
                mode="max",
                max_t=max(2, get_proxy(config.proxy).epochs),
                grace_period=1,
                reduction_factor=2,
                stop_last_trials=False,
            )
        done = len(run.study.get_trials(deepcopy=False))
        samples = MAX_TRIALS_FACTOR * config.trials - done
        if config.sampler == "grid":
            samples = min(samples, math.prod(len(c) for c in space.grid().values()) - done)
        trainable = tune.with_resources(
            tune.with_parameters(
                ray_trial,
                storage_url=run.storage_url,
                study_name=config.name,
                proxy_data=proxy_data,
                device=trial_device,
                threads=max(1, int(options.cpus_per_trial)),
            ),
            {"cpu": options.cpus_per_trial, "gpu": gpus},
        )
        bar = progress_bar(run, f"Ray, {fits} at a time", progress, "")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=max(1, samples),
                max_concurrent_trials=max(1, min(fits, config.trials)),
                reuse_actors=True,  # no new worker process (and torch import) per trial
            ),
            run_config=tune.RunConfig(
                name=config.name,
                storage_path=str(_ray_folder(run)),
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[_progress_callback(run.study, bar)],
                verbose=0,
            ),
        )
        tuner.fit()
        searcher.finish_unreported()
        if bar is not None:
            update_bar(bar, run.study.get_trials(deepcopy=False))
            bar.close()
    finally:
        ray.shutdown()  # stops the Ray this run started; only disconnects from a cluster


def _start_ray(address: str | None) -> None:
    """Start Ray here (dashboard off: its job API has no authentication), or join one."""
    import ray

    if ray.is_initialized():
        return
    try:
        if address is None:
            ray.init(
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = (
            "start a local Ray instance"
            if address is None
            else f"join the Ray cluster at {address!r}"
        )
        raise UserError(f"cannot {where}: {str(err).splitlines()[0]}") from None


def _ray_folder(run: SearchRun) -> Path:
    if run.out is not None:
        return (run.out / "ray").resolve()
    return Path("~/ray_results").expanduser()


def _progress_callback(study: optuna.Study, bar):
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            update_bar(bar, study.get_trials(deepcopy=False))

    return Progress()
