"""Running a search: one process (``ccsearch run``) or many (``ccsearch worker``).

The study, its configuration and every trial's record live in the Optuna storage, so
any process that can reach the storage can join, and results, dashboards and export
need nothing else.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna
import torch
import yaml
from tqdm import tqdm

from ccsearch.data import ProxyData
from ccsearch.errors import UserError
from ccsearch.results import trials_table
from ccsearch.search.objective import EVALUATED, Objective, TrialFailed
from ccsearch.search.space import SearchSpace
from ccsearch.search.storage import fail_interrupted_trials, open_storage, shown_url
from ccsearch.search.study import StudyConfig
from ccsearch.train import DeviceData, get_proxy, load_proxy_data, resolve_device

STORAGE_ENV = "CCSEARCH_STORAGE"  # where ``ccsearch worker`` finds the storage URL by default
MAX_TRIALS_FACTOR = 20  # stop after this many samples per wanted trial (mostly infeasible space)


@dataclass
class SearchRun:
    study: optuna.Study
    config: StudyConfig
    out: Path | None
    storage_url: str


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def create_or_resume(
    config: StudyConfig, out: Path, storage_url: str | None, resume: bool
) -> SearchRun:
    """Create the study (and its run folder), or reopen it with ``resume``."""
    storage_url = storage_url or default_storage(out)
    existed = out.exists()
    if resume:
        if storage_url == default_storage(out) and not (out / "study.db").exists():
            raise UserError(f"nothing to resume: {out / 'study.db'} does not exist")
    elif (out / "study.db").exists():
        raise UserError(f"{out} already holds a study: pass --resume to continue it, or --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    try:
        storage = open_storage(storage_url)
        if resume:
            study = optuna.load_study(study_name=config.name, storage=storage)
            study.sampler = config.make_sampler(config.space(), stream=len(study.trials))
            # The storage's config is what every worker (and Ray trial) reads: it takes
            # this run's overrides, e.g. a larger --trials.
            study.set_user_attr("config", config.to_dict())
            failed = fail_interrupted_trials(study)
            if failed:
                print(
                    f"resuming: trials {failed} were interrupted; their architectures are retried"
                )
        else:
            space = config.space()
            study = optuna.create_study(
                study_name=config.name,
                storage=storage,
                sampler=config.make_sampler(space),
                directions=["maximize", "minimize"],
            )
            study.set_user_attr("config", config.to_dict())
            study.set_user_attr("space", _space_dict(space))
            (out / "study.yaml").write_text(
                yaml.safe_dump(
                    {
                        "study": config.to_dict(),
                        "search_space": _space_dict(space),
                        "storage": shown_url(storage_url),
                    },
                    sort_keys=False,
                )
            )
    except optuna.exceptions.DuplicatedStudyError:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise UserError(
            f"study {config.name!r} already exists in {shown_url(storage_url)}: pass --resume"
        ) from None
    except KeyError:
        raise UserError(
            f"no study named {config.name!r} in {shown_url(storage_url)} to resume"
        ) from None
    except BaseException:
        if not existed:  # nothing half-written is left behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return SearchRun(study, config, out, storage_url)


def join_study(storage_url: str, study_name: str, heartbeats: bool = True) -> SearchRun:
    """Open an existing study from its storage alone (what ``ccsearch worker`` does)."""
    storage = open_storage(storage_url, heartbeats=heartbeats)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(
            f"no study {study_name!r} in {shown_url(storage_url)}; studies there: {names}"
        ) from None
    config = StudyConfig(**study.user_attrs["config"])
    space = SearchSpace(**study.user_attrs["space"])
    # Workers joining at once see the same trial count: the process id tells them apart.
    study.sampler = config.make_sampler(space, stream=len(study.trials) + os.getpid())
    return SearchRun(study, config, None, storage_url)


def optimize(
    run: SearchRun,
    *,
    data: str | None = None,
    device: str = "auto",
    progress: bool = True,
    worker_label: str = "",
    proxy_data: ProxyData | None = None,
) -> None:
    """Evaluate trials in this process until the study has its trained candidates."""
    config = run.config
    if proxy_data is None:
        proxy_data = load_proxy_data(get_proxy(config.proxy), data, seed=config.seed)
    objective = make_objective(run, proxy_data, device)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bar = progress_bar(run, proxy_data.description, progress, worker_label)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        update_bar(bar, trials)
        if (
            trial.user_attrs.get("status") == "surplus"
            or trained_count(trials) >= config.trials
            or len(trials) >= MAX_TRIALS_FACTOR * config.trials
        ):
            study.stop()

    trials = run.study.get_trials(deepcopy=False)
    update_bar(bar, trials)
    if trained_count(trials) < config.trials:
        run.study.optimize(
            objective, callbacks=[after_trial], catch=(TrialFailed,), gc_after_trial=True
        )
    if bar is not None:
        bar.close()


def make_objective(
    run: SearchRun, proxy_data: ProxyData, device: str, report=None, pruner: str | None = None
) -> Objective:
    """The trial function of either backend, on this process's device."""
    config = run.config if pruner is None else replace(run.config, pruner=pruner)
    proxy = get_proxy(config.proxy)
    torch_device = resolve_device(device)
    return Objective(
        config,
        SearchSpace(**run.study.user_attrs["space"]),
        proxy,
        DeviceData.from_proxy_data(proxy_data, torch_device, proxy.max_val_images),
        str(torch_device),
        report=report,
    )


def spawn_workers(run: SearchRun, n: int, *, data: str | None, device: str, progress: bool) -> None:
    """``n`` ``ccsearch worker`` processes on the study's storage; this one shows progress."""
    threads = max(1, (os.cpu_count() or 1) // n)
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    procs = []
    for i in range(n):
        # The URL goes by environment, not argv: other users can read a process's argv.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), STORAGE_ENV: run.storage_url}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        cmd = [
            sys.executable,
            "-m",
            "ccsearch.cli",
            "worker",
            "--study",
            run.config.name,
            "--device",
            device,
            "--quiet",
        ]
        if data:
            cmd += ["--data", data]
        procs.append(subprocess.Popen(cmd, env=env))
    bar = progress_bar(run, f"{n} workers", progress, "")
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(2)
            update_bar(bar, run.study.get_trials(deepcopy=False))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        if bar is not None:
            update_bar(bar, run.study.get_trials(deepcopy=False))
            bar.close()
    bad = [p.returncode for p in procs if p.returncode not in (0, None)]
    if bad:
        raise UserError(
            f"{len(bad)} worker process(es) failed (exit codes {bad}); see their messages above"
        )


def write_results(run: SearchRun) -> Path | None:
    if run.out is None:
        return None
    path = run.out / "results.csv"
    trials_table(run.study).to_csv(path, index=False)
    return path


def trained_count(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Candidates trained (fully or until pruned): what the study's ``trials`` counts."""
    return sum(t.user_attrs.get("status") in EVALUATED for t in trials)


def _space_dict(space: SearchSpace) -> dict:
    data = asdict(space)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def progress_bar(run: SearchRun, what: str, progress: bool, label: str):
    if not progress:
        return None
    logging.getLogger("optuna").setLevel(logging.WARNING)
    return tqdm(
        total=run.config.trials,
        desc=f"{label}{run.config.name}",
        unit="trial",
        dynamic_ncols=True,
        postfix={"data": what},
    )


def update_bar(bar, trials: list[optuna.trial.FrozenTrial]) -> None:
    if bar is None:
        return
    ok = [t.user_attrs["top1"] for t in trials if t.user_attrs.get("status") == "ok"]
    infeasible = sum(t.user_attrs.get("status") == "infeasible" for t in trials)
    pruned = sum(t.user_attrs.get("status") == "pruned" for t in trials)
    bar.n = min(trained_count(trials), bar.total)
    bar.set_postfix(
        best=f"{max(ok):.1f}%" if ok else "-", infeasible=infeasible, pruned=pruned, refresh=False
    )
    bar.refresh()
