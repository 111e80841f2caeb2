"""Trials whose process died or was stopped: detect them, keep what they finished, retry
the rest once.

- A trial's *owner* (``host:pid`` on its record) beats its heartbeat while it holds the
  trial (RDB storages: every ``HEARTBEAT`` seconds, stale after ``GRACE``).  Optuna's
  ``fail_stale_trials`` fails a trial whose heartbeat went stale, on any machine, and
  calls ``recover``; a trial whose owner is on this machine and no longer runs is failed
  at once, which is all a journal storage (no heartbeats) can tell.
- ``recover``: a dead trial that had recorded its result (it died between its record
  and telling Optuna) is kept as a finished copy, so it is not trained again; one that
  had not is retried: a WAITING copy with the same architecture and a clean record.  A
  trial is retried at most once, and a chain of retries at most ``RETRIES`` times.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings

import optuna
from optuna.storages import RDBStorage
from optuna.trial import create_trial

from ccsearch.search import record as rec
from ccsearch.search.record import STATE, Status, TrialState

RETRIES = 2  # retries of one architecture after its trials died or were interrupted


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Queue one retry of a dead or interrupted trial (False: none is due)."""
    if trial.state != TrialState.FAIL:
        return False
    trials = study.get_trials(deepcopy=False)
    if any(t.system_attrs.get("retry_of") == trial.number for t in trials):
        return False  # retried already
    chain = [*trial.system_attrs.get("retry_chain", []), trial.number]
    if len(chain) > RETRIES:
        return False
    study.add_trial(
        create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={"retry_of": trial.number, "retry_chain": chain},
            # a clean record, but still the reference it was
            user_attrs={k: v for k, v in trial.user_attrs.items() if k == rec.REFERENCE},
        )
    )
    return True


def recover(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After a trial was failed as dead: keep its recorded result, or retry it.

    Also Optuna's ``heartbeat_stale_trial_callback`` for RDB storages."""
    record = rec.TrialRecord.from_dict(trial.user_attrs.get(rec.KEY) or {}, trial.number)
    kept = record.status is not None and record.status not in (
        Status.FAILED,
        Status.INTERRUPTED,
        Status.BACKED_OFF,
    )
    if not kept:
        if record.status in (None, Status.INTERRUPTED):
            retry(study, trial)
        return
    state = STATE[record.status]
    values = record.values() if state == TrialState.COMPLETE else None
    if record.status == Status.DUPLICATE and record.twin is not None:
        values = study.trials[record.twin].values or values
    study.add_trial(
        create_trial(
            state=state,
            values=values,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={rec.KEY: record.to_dict()},
            system_attrs={"recovered_from": trial.number},
        )
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def owner_is_dead(owner: str) -> bool:
    """``host:pid`` names a process on this machine that no longer runs."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: only its heartbeat can tell
    return int(pid) != os.getpid() and not _alive(int(pid))


def reap(study: optuna.Study) -> list[int]:
    """Fail the trials whose process is gone and recover them; their numbers."""
    with warnings.catch_warnings():  # "experimental" in Optuna; ccsearch relies on it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB storages: calls ``recover`` itself
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = (trial.user_attrs.get(rec.KEY) or {}).get("owner", "")
        if not owner_is_dead(owner):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process failed it first
        recover(study, study.get_trials(deepcopy=False)[trial.number])
        reaped.append(trial.number)
    return reaped


def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, without Optuna's warning that heartbeats belong to
    ``Study.optimize``: ccsearch beats itself (``Heartbeat``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask()


def release_session(storage: optuna.storages.BaseStorage) -> None:
    """Roll back this thread's storage session: after a KeyboardInterrupt inside a storage
    call, its open transaction would keep SQLite locked for the writes that follow."""
    if isinstance(storage, RDBStorage):
        storage.remove_session()


def has_heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    storage = getattr(storage, "_backend", storage)  # a study's RDB storage comes wrapped
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


class Heartbeat:
    """Beats for the trials this process holds, from one thread.

    Optuna beats only inside ``Study.optimize``; ccsearch asks and tells itself (and the
    Ray driver holds many trials at once), so it beats with the storage's public
    ``record_heartbeat``."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage
        self.enabled = has_heartbeats(storage)
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, number: int) -> None:
        if not self.enabled:
            return
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.record_heartbeat(trial_id)  # at once: a trial that dies early goes stale
        with self.lock:
            self.trial_ids.add(trial_id)
        if self.thread is None:
            self.thread = threading.Thread(target=self._beat, name="ccsearch-heartbeat", daemon=True)
            self.thread.start()

    def discard(self, number: int) -> None:
        if not self.enabled:
            return
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        with self.lock:
            self.trial_ids.discard(trial_id)

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 10
        while not self.stop.wait(interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                with contextlib.suppress(Exception):  # a storage hiccup: the next beat retries
                    self.storage.record_heartbeat(trial_id)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
