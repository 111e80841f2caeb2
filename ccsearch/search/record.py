"""A trial's record: what one candidate is, what it cost and how it ended.

Every trial keeps one typed record (``TrialRecord``) as one user attribute, so one
storage write saves a whole stage and results, dashboards, export, the claim policy and
the pruners all read the same fields.  ``Status`` says how a trial ended; ``STATE`` is
the one table from a status to the Optuna state the trial is told with.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

import optuna

TrialState = optuna.trial.TrialState
KEY = "ccsearch"  # the user attribute holding the record
REFERENCE = "reference"  # the user attribute naming a reference trial (StudyConfig.references)


class Status(str, Enum):
    """How a trial ended (``None`` on a record: it has not ended yet)."""

    OK = "ok"  # trained to the last epoch: on the front if the best for its MADDs
    DIVERGED = "diverged"  # trained, loss went non-finite: counts as trained, scores 0
    PRUNED = "pruned"  # trained until the pruner stopped it: counts as trained
    INFEASIBLE = "infeasible"  # over the MADD budget: never trained
    DUPLICATE = "duplicate"  # its architecture was already trained: takes that result
    BACKED_OFF = "backed_off"  # the study's slots were taken, or its twin was training
    FAILED = "failed"  # could not be evaluated (out of memory, a crash): reason says why
    INTERRUPTED = "interrupted"  # its process was stopped or died: retried once


class Stage(str, Enum):
    """Where a running trial is; ``TRAINING`` and ``COMMITTING`` hold a training slot."""

    SAMPLED = "sampled"
    TRAINING = "training"
    COMMITTING = "committing"  # about to record its result: see ccsearch/search/policy.py


# The one table from a trial's status to its Optuna state.
STATE = {
    Status.OK: TrialState.COMPLETE,
    Status.DIVERGED: TrialState.COMPLETE,
    Status.INFEASIBLE: TrialState.COMPLETE,
    Status.DUPLICATE: TrialState.COMPLETE,
    Status.PRUNED: TrialState.PRUNED,
    Status.BACKED_OFF: TrialState.PRUNED,
    Status.FAILED: TrialState.FAIL,
    Status.INTERRUPTED: TrialState.FAIL,
}
# Candidates the study trained: they count towards its ``trials`` and are never retrained.
TRAINED = frozenset({Status.OK, Status.DIVERGED, Status.PRUNED})


def this_process() -> str:
    """``host:pid``: who runs a trial, and who holds it in the storage."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class TrialRecord:
    """One trial's fields.  ``number`` and ``state`` come from Optuna and are not stored."""

    number: int = -1
    state: TrialState = TrialState.RUNNING
    # what the candidate is and costs (known before training)
    spec: dict[str, Any] | None = None  # ArchSpec.to_dict(): what export and train read
    digest: str = ""  # spec_digest: the same architecture has the same digest
    madds: int = 0  # at 224px, 1000 classes, in ``convention``
    params: int = 0
    group_madds: list[int] = field(default_factory=list)
    moe_madds: int = 0  # the same network with each CondConv layer as E separate convolutions
    convention: str = "paper"
    budget: int = 0
    # where it is
    stage: Stage = Stage.SAMPLED
    status: Status | None = None
    reason: str = ""
    owner: str = ""  # host:pid of the process that tells the trial (the Ray driver for Ray)
    worker: str = ""  # host:pid of the process that trained it
    sampler_seed: int = 0  # the seed of the sampler that proposed it
    twin: int | None = None  # the trial whose result a duplicate took
    reference: str = ""  # the study's name for a reference candidate (baseline, paper), or ""
    # how it was measured
    seed: int = 0  # training seed
    device: str = ""
    proxy: str = ""
    data: str = ""  # the data's description: says "not ImageNet" for the smoke proxy
    smoke_test: bool = False
    data_checksum: str = ""  # of the proxy's images and labels: same data, same checksum
    threads: int = 0  # torch intra-op threads: CPU results change with the thread count
    versions: dict[str, str] = field(default_factory=dict)  # ccsearch, torch, optuna
    bitwise_reproducible: bool = True  # False on GPUs: cuDNN picks its kernels by timing
    # what training gave
    top1: float | None = None  # validation top-1 (%) after the last epoch run (mean of seeds)
    curve: list[float] = field(default_factory=list)  # validation top-1 per epoch (mean of seeds)
    # with the study's ``repeats`` > 1: one entry per training seed, in order
    seeds: list[int] = field(default_factory=list)
    seed_top1: list[float] = field(default_factory=list)
    seed_curves: list[list[float]] = field(default_factory=list)
    top1_std: float | None = None  # standard deviation of seed_top1 (None: one seed)
    # per CondConv group (key: 1-based group number as a string): routing weights over the
    # validation images: {"bins": [lo, hi], "hist": 20 counts, "near_zero": fraction of
    # weights < 0.05, "active": mean experts > 0.05 per example}
    routing_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    images_per_sec: float = 0.0
    train_time: float = 0.0  # seconds of proxy training
    wall_time: float = 0.0  # seconds for the whole trial, counting and checks included

    @property
    def running(self) -> bool:
        return self.state == TrialState.RUNNING and self.status is None

    @property
    def trained(self) -> bool:
        """Recorded as trained (even if its process died before telling Optuna)."""
        return self.status in TRAINED

    @property
    def holds_slot(self) -> bool:
        """Running and past its checks: it holds one of the study's training slots."""
        return self.running and self.stage in (Stage.TRAINING, Stage.COMMITTING)

    def values(self, twin_values: list[float] | None = None) -> list[float] | None:
        """The Optuna values for its status: (proxy top-1, MADDs) or None."""
        if STATE[self.status] != TrialState.COMPLETE:
            return None
        if self.status == Status.DUPLICATE and twin_values is not None:
            return list(twin_values)
        top1 = self.top1 if self.status == Status.OK and self.top1 is not None else 0.0
        return [float(top1), float(self.madds)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["number"], data["state"]
        data["stage"] = self.stage.value
        data["status"] = None if self.status is None else self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], number: int = -1, state=TrialState.RUNNING):
        known = {f.name for f in fields(cls)} - {"number", "state"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["stage"] = Stage(kwargs.get("stage", Stage.SAMPLED))
        if kwargs.get("status") is not None:
            kwargs["status"] = Status(kwargs["status"])
        return cls(number=number, state=state, **kwargs)


def read(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    """The trial's record, with a status that agrees with its Optuna state: a trial that
    Optuna failed (a stale heartbeat, a dead process) without a failure recorded reads as
    ``interrupted``, and one still waiting (a retry) has a fresh record."""
    record = TrialRecord.from_dict(trial.user_attrs.get(KEY) or {}, trial.number, trial.state)
    record.reference = record.reference or trial.user_attrs.get(REFERENCE, "")  # even queued
    if trial.state == TrialState.FAIL and record.status not in (Status.FAILED, Status.INTERRUPTED):
        recorded = record.status not in (None, Status.BACKED_OFF)  # recovery.recover kept it
        record.status = Status.INTERRUPTED
        record.reason = "its process died" + (
            " after recording its result, which is kept as a finished copy" if recorded else "")
    return record


def read_all(study: optuna.Study) -> list[TrialRecord]:
    return [read(t) for t in study.get_trials(deepcopy=False)]


class RecordCache:
    """``read_all`` for a process that reads one study again and again (at every claim and
    after every epoch): a finished trial never changes, so its record is decoded once and
    each read decodes only the trials still running or waiting.  The records it returns
    are shared between reads: callers read them, never change them."""

    def __init__(self) -> None:
        self._finished: dict[tuple[str, int], TrialRecord] = {}

    def read_all(self, study: optuna.Study) -> list[TrialRecord]:
        records = []
        for trial in study.get_trials(deepcopy=False):
            key = (study.study_name, trial.number)
            record = self._finished.get(key)
            if record is None:
                record = read(trial)
                if trial.state.is_finished():
                    self._finished[key] = record
            records.append(record)
        return records


def write(trial: optuna.Trial, record: TrialRecord) -> None:
    """One storage write for the whole record."""
    trial.set_user_attr(KEY, record.to_dict())


def tell(study: optuna.Study, trial: optuna.Trial | int, record: TrialRecord, values=None) -> None:
    """End the trial in Optuna with the state its status maps to."""
    state = STATE[record.status]
    if state == TrialState.COMPLETE and values is None:
        values = record.values()
    try:  # skip_if_finished: another process already failed it as dead
        study.tell(trial, values, state=state, skip_if_finished=True)
    except RuntimeError as err:
        # GridSampler calls ``study.stop()`` once the grid is used up, which raises outside
        # ``Study.optimize``; Optuna has stored the trial's state by then.
        if "Study.stop" not in str(err):
            raise
