"""What one trial does: sample, count, check the budget and the claim, train, record.

The steps are separate methods because the backends run them in different places: the
in-process and worker backends run all of them in one process (``evaluate``); the Ray
backend runs ``start``, ``after_epoch`` and ``finish`` on the driver, which alone writes
the storage, and only the training in a Ray trial.  Training goes through a ``Trainer``
(the seam the policy tests use to run the checks without training a model).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from ccsearch.arch import ArchSpec, spec_digest
from ccsearch.madds import MaddsReport, count_madds, moe_equivalent_madds
from ccsearch.search import policy
from ccsearch.search import record as rec
from ccsearch.search.pruners import Pruner, finished_curves
from ccsearch.search.record import Stage, Status, TrialRecord
from ccsearch.search.recovery import retry
from ccsearch.search.space import SearchSpace
from ccsearch.search.storage import parameters_together
from ccsearch.search.study import StudyConfig
from ccsearch.train import TrainResult, train_repeated

# (spec, seed, on_epoch) -> result; on_epoch(epoch, top1) returns True to stop training.
# A study with ``repeats`` > 1 calls it once per seed (``train_repeated``).
Trainer = Callable[[ArchSpec, int, Callable[[int, float], bool]], TrainResult]
_RESULT_STATUS = {"ok": Status.OK, "diverged": Status.DIVERGED, "pruned": Status.PRUNED}


def measured_on(proxy: str, data: str, smoke_test: bool, device: str) -> dict[str, Any]:
    """The record fields every backend knows before training: how accuracy is measured."""
    return {"proxy": proxy, "data": data, "smoke_test": smoke_test, "device": device}


@dataclass
class Candidate:
    """One trial on its way through the steps."""

    trial: optuna.Trial
    record: TrialRecord
    spec: ArchSpec | None = None  # sampled by ``claim``
    started: float = field(default_factory=time.perf_counter)
    stop: policy.Verdict | None = None  # set when a check after an epoch said stop
    ended: bool = False  # told to Optuna


def error_reason(err: BaseException) -> str:
    """A failed trial's reason: the error's type and first line."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


@dataclass
class Evaluator:
    config: StudyConfig
    space: SearchSpace
    pruner: Pruner
    epochs: int  # the proxy's
    measured_on: dict  # record fields known before training: proxy, data, smoke_test, device
    sampler_seed: int = 0
    owner: str = field(default_factory=rec.this_process)
    # Called first on Ctrl-C: a storage call it broke may hold a transaction (and SQLite's
    # lock) open, which the records written next would wait on.
    on_interrupt: Callable[[], None] | None = None
    _counted: dict = field(default_factory=dict, repr=False)  # digest -> (report, MoE MADDs)
    _reference_specs: dict | None = field(default=None, repr=False)
    _records: rec.RecordCache = field(default_factory=rec.RecordCache, repr=False)

    # ---- the steps ----------------------------------------------------------------------

    def begin(self, trial: optuna.Trial) -> Candidate:
        record = TrialRecord(number=trial.number, owner=self.owner, worker=self.owner,
                             sampler_seed=self.sampler_seed, budget=self.config.budget,
                             seed=self.config.seed, **self.measured_on)
        return Candidate(trial, record)

    def claim(self, c: Candidate) -> bool:
        """Sample, count and check: True to train, False when the trial already ended."""
        trial, record = c.trial, c.record
        record.reference = trial.user_attrs.get(rec.REFERENCE, "")
        # Who holds the trial, written before the count (with the sampled parameters, in
        # one transaction where the storage can): a kill in the count leaves a trial whose
        # owner is dead, which the next process fails and retries at once.
        with parameters_together(trial.storage):
            rec.write(trial, record)
            if record.reference:  # a fixed architecture of the study, not sampled
                spec = ArchSpec.from_dict(self._references(trial)[record.reference])
            else:
                spec = self.space.sample(trial, suggest_all=self.config.sampler == "grid")
        c.spec = spec
        record.spec, record.digest = spec.to_dict(), spec_digest(spec)
        report, record.moe_madds = self._count(spec, record.digest)
        record.madds, record.params = report.madds, report.params
        record.group_madds, record.convention = [g.madds for g in report.groups], report.convention
        # Feasible when <= 0; NSGA-II and TPE rank infeasible candidates below feasible ones.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The constraint value is ignored")
            trial.set_constraint("madds_over_budget", report.madds - self.config.budget)
        if report.madds > self.config.budget:  # never trained: costs milliseconds
            reason = f"{report.madds:,} MADDs over the budget of {self.config.budget:,}"
            self._end(c, Status.INFEASIBLE, reason)
            return False
        record.stage = Stage.TRAINING
        rec.write(trial, record)  # the claim, written before reading the others
        verdict = self._check(c)
        if verdict is not policy.GO:
            self._end(c, verdict.status, verdict.reason, verdict.twin)
            return False
        return True

    def start(self, trial: optuna.Trial) -> Candidate | None:
        """``begin`` and ``claim``: a Candidate to train, or None."""
        c = self.begin(trial)
        return c if self.claim(c) else None

    def after_epoch(self, c: Candidate, epoch: int, top1: float) -> bool:
        """Record the epoch, re-check the claim, ask the pruner: True to stop training."""
        c.record.curve = [*c.record.curve[: epoch - 1], top1]  # a restarted Ray trial: anew
        c.record.epochs = epoch
        records = self._records.read_all(c.trial.study)
        verdict = policy.check(c.record.number, c.record.digest, records, self.config.wanted)
        if verdict is policy.GO and self.pruner.should_prune(
            epoch, top1, self.epochs, finished_curves(records)
        ):
            verdict = policy.Verdict(
                Status.PRUNED, f"{self.config.pruner} pruner stopped it after epoch {epoch}"
            )
        c.stop = None if verdict is policy.GO else verdict
        rec.write(c.trial, c.record)
        return c.stop is not None

    def finish(self, c: Candidate, result: TrainResult) -> TrialRecord:
        """Record the training result and end the trial (after the commit check)."""
        r = c.record
        r.curve, r.losses, r.epochs = list(result.curve), list(result.losses), result.epochs
        r.images_per_sec, r.train_time = result.images_per_sec, result.wall_time
        r.top1, r.device = result.top1, result.device or r.device
        r.seeds, r.seed_top1, r.seed_curves = result.seeds, result.seed_top1, result.seed_curves
        r.top1_std, r.routing_stats = result.top1_std, result.routing_stats
        r.data_checksum = result.data_checksum or r.data_checksum
        r.threads, r.versions = result.threads or r.threads, result.versions or r.versions
        r.bitwise_reproducible = result.bitwise_reproducible
        if c.stop is not None and c.stop.status != Status.PRUNED:  # backed off mid-training
            self._end(c, c.stop.status, c.stop.reason, c.stop.twin)
            return r
        if result.status == "failed":
            self._end(c, Status.FAILED, result.reason)
            return r
        status = Status.PRUNED if c.stop is not None else _RESULT_STATUS[result.status]
        reason = c.stop.reason if c.stop is not None else result.reason
        r.stage = Stage.COMMITTING
        rec.write(c.trial, r)
        verdict = self._check(c)
        if verdict is not policy.GO:  # another trial won the slot while this one trained
            status, reason = verdict.status, f"trained, then lost its slot: {verdict.reason}"
        self._end(c, status, reason, verdict.twin)
        return r

    def fail(self, c: Candidate, reason: str) -> None:
        self._end(c, Status.FAILED, reason)

    def interrupt(self, c: Candidate, reason: str) -> None:
        """Stopped from outside (Ctrl-C, the experiment ended): retried by ``--resume``."""
        if c.ended:
            return
        self._end(c, Status.INTERRUPTED, reason)
        retry(c.trial.study, c.trial.study.get_trials(deepcopy=False)[c.record.number])

    def evaluate(self, trial: optuna.Trial, trainer: Trainer) -> TrialRecord:
        """All steps in this process."""
        c = self.begin(trial)
        try:
            if self.claim(c):
                result = train_repeated(lambda seed, on_epoch: trainer(c.spec, seed, on_epoch),
                                        self.config.seeds(), lambda e, t: self.after_epoch(c, e, t))
                self.finish(c, result)
        except KeyboardInterrupt:
            if self.on_interrupt is not None:
                self.on_interrupt()
            self.interrupt(c, "stopped by Ctrl-C")
            raise
        except Exception as err:  # a bug or a broken device: this trial fails, the search goes on
            self.fail(c, error_reason(err))
        return c.record

    # ---- helpers ------------------------------------------------------------------------

    def _count(self, spec: ArchSpec, digest: str) -> tuple[MaddsReport, int]:
        """MADDs of an architecture and of its mixture-of-experts equivalent, counted once
        per process (samplers repeat themselves; both come from the same cached parts)."""
        if digest not in self._counted:
            convention = self.config.convention
            self._counted[digest] = (count_madds(spec, convention=convention),
                                     moe_equivalent_madds(spec, convention=convention))
        return self._counted[digest]

    def _references(self, trial: optuna.Trial) -> dict:
        """The study's references as spec dicts, read once per process."""
        if self._reference_specs is None:
            self._reference_specs = trial.study.user_attrs.get("references") or {}
        return self._reference_specs

    def _check(self, c: Candidate) -> policy.Verdict:
        records = self._records.read_all(c.trial.study)
        return policy.check(c.record.number, c.record.digest, records, self.config.wanted)

    def _end(self, c: Candidate, status: Status, reason: str, twin: TrialRecord | None = None):
        if c.ended:
            return
        r = c.record
        r.status, r.reason = status, reason
        r.wall_time = time.perf_counter() - c.started
        values = None
        if twin is not None:
            r.twin = twin.number
            values = policy.twin_values(twin)
        rec.write(c.trial, r)
        rec.tell(c.trial.study, c.trial, r, values)
        c.ended = True
