"""A search run's lifecycle: create, resume or join a study, and ``finalize`` its files.

The study, its configuration and every trial's record live in the Optuna storage, so any
process that can reach the storage can join, and results, dashboards and export need
nothing else.  A run folder (``runs/<study>/``) holds the default SQLite storage,
``study.yaml`` and what ``finalize`` writes: ``results.csv``, ``pareto.html`` and
``best_arch.json``, for the CLI and the Python API alike.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import pandas as pd
import yaml

from ccsearch.errors import UserError
from ccsearch.madds import load_madds_cache, madds_cache
from ccsearch.search import record as rec
from ccsearch.search.recovery import reap, recover
from ccsearch.search.space import SearchSpace
from ccsearch.search.storage import open_storage, shown_url
from ccsearch.search.study import StudyConfig

MAX_TRIALS_FACTOR = 20  # stop after this many samples per wanted trial (mostly infeasible space)
PROXY = "proxy"  # the study's proxy, every field resolved when the study was made
METRICS = ["proxy top-1", "MADDs"]  # the study's two objectives, as optuna-dashboard shows them
MADDS_CACHE = "madds_cache"  # study user attribute: MADD part counts (ccsearch.madds), shared


@dataclass
class SearchRun:
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    config: StudyConfig
    space: SearchSpace
    storage_url: str
    out: Path | None = None  # the run folder; None for a worker that joined from the storage
    sampler_seed: int = 0  # the stream of this process's sampler (recorded on its trials)
    _records: rec.RecordCache = field(default_factory=rec.RecordCache, repr=False)

    def records(self) -> list[rec.TrialRecord]:
        """Every trial's record, finished ones decoded once (the backends read the study
        before every trial they ask for); shared between reads, never to be changed."""
        return self._records.read_all(self.study)

    def exhausted(self, records: list[rec.TrialRecord]) -> bool:
        """No point sampling more: too many samples, or the whole grid was tried."""
        if len(records) >= MAX_TRIALS_FACTOR * self.config.wanted:
            return True
        if self.config.sampler == "grid":
            size = math.prod(len(c) for c in self.space.grid().values())
            sampled = [r for r in records if not r.reference]  # references are not grid points
            waiting = sum(r.state == optuna.trial.TrialState.WAITING for r in sampled)
            return len(sampled) - waiting >= size and not waiting
        return False


@dataclass(frozen=True)
class RunFiles:
    results: Path
    pareto: Path
    best: Path | None  # None while nothing is on the front
    table: pd.DataFrame
    front: pd.DataFrame
    top: pd.Series | None  # the front's row that best_arch.json holds


CREATING = ".creating"  # held while ``create`` makes a run folder's study


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def space_dict(space: SearchSpace) -> dict:
    data = asdict(space)
    data.pop("source", None)  # where the file was is not what the space is
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def create(config: StudyConfig, out: Path, storage_url: str | None = None, data: str = "",
           data_arg: str | None = None) -> SearchRun:
    """A new study and its run folder; ``data`` describes the proxy data (kept for resume),
    ``data_arg`` is the ``--data`` it was read from (kept to retrain a trial)."""
    storage_url = storage_url or default_storage(out)
    if (out / "study.db").exists() or (out / "study.yaml").exists():
        raise UserError(f"{out} already holds a study: pass --resume to continue it, or --out DIR")
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    claim = out / CREATING
    try:  # the folder's claim, atomic: of two runs started on it at once, one creates
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise UserError(f"another ccsearch run is creating a study in {out} (if none is, "
                        f"remove {claim}): pass --resume to continue it, or --out DIR") from None
    if (out / "study.db").exists() or (out / "study.yaml").exists():  # made meanwhile
        claim.unlink()
        raise UserError(f"{out} already holds a study: pass --resume to continue it, or --out DIR")
    try:
        storage = open_storage(storage_url, on_stale=recover)
        space = config.space()
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            sampler=config.make_sampler(space),
            directions=["maximize", "minimize"],
        )
        with warnings.catch_warnings():  # "experimental" in Optuna since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRICS)
        study.set_user_attr("config", config.to_dict())
        study.set_user_attr(PROXY, config.proxy_config().to_dict())
        study.set_user_attr("space", space_dict(space))
        study.set_user_attr("data", data)
        study.set_user_attr("data_arg", data_arg)
        # The references, resolved once (a spec file need not exist where workers run),
        # queued first: trained before the sampler proposes anything.
        references = {name: spec.to_dict() for name, spec in config.reference_specs().items()}
        study.set_user_attr("references", references)
        for name in references:
            study.enqueue_trial({}, user_attrs={rec.REFERENCE: name}, skip_if_exists=False)
        shown = {"study": config.to_dict(), "search_space": space_dict(space), "data": data,
                 "storage": shown_url(storage_url)}
        (out / "study.yaml").write_text(yaml.safe_dump(shown, sort_keys=False))  # last: readers
        claim.unlink()  # wait for it to open the study
    except optuna.exceptions.DuplicatedStudyError:
        _remove_if_new(out, existed, storage_url)
        raise UserError(
            f"study {config.name!r} already exists in {shown_url(storage_url)}: pass --resume"
        ) from None
    except BaseException:
        _remove_if_new(out, existed, storage_url)  # nothing half-written is left behind
        raise
    return SearchRun(study, storage, config, space, storage_url, out)


def resume(
    config: StudyConfig,
    out: Path,
    storage_url: str | None = None,
    *,
    data: str | None = None,
    keep_trials: bool = False,
) -> tuple[SearchRun, list[int]]:
    """Reopen a study to go on with it: the run and the trials queued for a retry.

    The configuration must be the study's own (one proxy, budget and space per front):
    only a larger ``trials`` is taken.  ``keep_trials`` keeps the study's ``trials``."""
    storage_url = storage_url or default_storage(out)
    if storage_url == default_storage(out) and not (out / "study.db").exists():
        raise UserError(f"nothing to resume: {out / 'study.db'} does not exist")
    storage = open_storage(storage_url, on_stale=recover, must_exist=True)  # never makes one
    try:
        study = optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(
            f"no study named {config.name!r} in {shown_url(storage_url)} to resume; "
            f"studies there: {names}"
        ) from None
    stored = StudyConfig(**study.user_attrs["config"])
    if keep_trials:
        config = replace(config, trials=stored.trials)
    changes = config.changes_from(stored)
    if space_dict(config.space()) != study.user_attrs["space"]:
        changes.append(f"search space: {config.search_space} is not the space the study searches")
    changes += proxy_changes(study, config)
    if data is not None and study.user_attrs.get("data") and data != study.user_attrs["data"]:
        changes.append(f"data: the study has {study.user_attrs['data']!r}, this run asks for {data!r}")
    if changes:
        raise UserError("--resume cannot change the study: " + "; ".join(changes))
    study.set_user_attr("config", config.to_dict())  # what workers and Ray trials read
    run = _joined(study, storage, config, storage_url, out)
    reap(study)  # only trials whose process is gone: live workers keep theirs
    waiting = [r.number for r in run.records() if r.state == optuna.trial.TrialState.WAITING]
    return run, waiting


def join(storage_url: str, study_name: str) -> SearchRun:
    """Open an existing study from its storage alone (what ``ccsearch worker`` does)."""
    storage = open_storage(storage_url, on_stale=recover, must_exist=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(
            f"no study {study_name!r} in {shown_url(storage_url)}; studies there: {names}"
        ) from None
    return _joined(study, storage, StudyConfig(**study.user_attrs["config"]), storage_url, None)


def proxy_changes(study: optuna.Study, config: StudyConfig) -> list[str]:
    """Whether ``config``'s proxy still resolves to the one the study trains with: a preset
    changed by an upgrade or an edited proxy YAML would train the study's later trials on
    another proxy.  (A study made before ccsearch recorded its proxy cannot be checked.)"""
    stored = study.user_attrs.get(PROXY)
    if not stored:
        return []
    changed = config.proxy_config().changed_fields(stored)
    if not changed:
        return []
    shown = ", ".join(f"{k} {was!r} -> {now!r}" for k, (was, now) in changed.items())
    return [f"proxy: {config.proxy} now differs from the proxy the study trains with ({shown})"]


def open_folder(out: Path) -> SearchRun:
    """The study of a run folder (its default SQLite storage), for reading its results."""
    out = Path(out)
    if not (out / "study.yaml").is_file() or not (out / "study.db").is_file():
        raise UserError(f"{out} is not a run folder (no study.yaml and study.db in it)")
    name = yaml.safe_load((out / "study.yaml").read_text())["study"]["name"]
    search = join(default_storage(out), name)
    return replace(search, out=out)


def _joined(study, storage, config: StudyConfig, storage_url: str, out: Path | None) -> SearchRun:
    """A process joining a study with trials: its sampler gets a stream of its own, drawn
    at random (process ids repeat across containers) and recorded on its trials."""
    attrs = study.user_attrs
    space = SearchSpace(**attrs["space"])
    load_madds_cache(attrs.get(MADDS_CACHE) or {})  # parts another process already traced
    stream = secrets.randbelow(2**31 - 1) + 1
    study.sampler = config.make_sampler(space, seed_stream=stream)
    return SearchRun(study, storage, config, space, storage_url, out, sampler_seed=stream)


def share_madds_cache(study: optuna.Study) -> None:
    """Store this process's MADD part counts with the study, for every process that joins
    it later (a resume, a worker, a reader).  Two processes writing at once may each lose
    the other's new parts: harmless, they are counted again."""
    stored = study.user_attrs.get(MADDS_CACHE) or {}
    new = {key: entry for key, entry in madds_cache().items() if key not in stored}
    if new:
        study.set_user_attr(MADDS_CACHE, {**stored, **new})


def finalize(run: SearchRun) -> RunFiles | None:
    """Write ``results.csv``, ``pareto.html`` and ``best_arch.json`` into the run folder."""
    from ccsearch.results import best_on_front, pareto_front, trials_table
    from ccsearch.run_report import atomic_write, write_best_arch, write_pareto_page

    share_madds_cache(run.study)
    if run.out is None:
        return None
    table = trials_table(run.study, run.out)
    front = pareto_front(table)
    results = run.out / "results.csv"
    atomic_write(results, table.to_csv(index=False))
    pareto = write_pareto_page(run, run.out / "pareto.html")
    top = best_on_front(front)
    best = None
    if top is not None:
        best = write_best_arch(run.study, top, run.out / "best_arch.json")
    return RunFiles(results, pareto, best, table, front, top)


def started(run: SearchRun) -> bool:
    """Has any trial begun?  (The queued references alone do not count.)"""
    waiting = optuna.trial.TrialState.WAITING
    return any(t.state != waiting for t in run.study.get_trials(deepcopy=False))


def discard(run: SearchRun, existed: bool) -> None:
    """Undo ``create`` for a run refused before its first trial: the study (in a storage
    of its own) and the run folder, or what ``create`` wrote into a folder that existed."""
    if run.storage_url != default_storage(run.out):
        optuna.delete_study(study_name=run.config.name, storage=run.storage)
    engine = getattr(run.storage, "engine", None)
    if engine is not None:
        engine.dispose()  # SQLite's write-ahead log goes with the last connection
    _remove_if_new(run.out, existed, run.storage_url)
    shutil.rmtree(run.out / "ray", ignore_errors=True)


def _remove_if_new(out: Path, existed: bool, storage_url: str) -> None:
    """Undo a failed ``create``: what it made, and only that (it holds the folder's claim)."""
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    names = ["study.yaml", CREATING]
    if storage_url == default_storage(out):
        names += ["study.db", "study.db-wal", "study.db-shm"]
    for name in names:
        (out / name).unlink(missing_ok=True)
