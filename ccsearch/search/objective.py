"""What one trial does: sample, count, check the budget and duplicates, train, record.

Every trial stores everything results, dashboards and export need as user attributes:
the full ``ArchSpec`` JSON, MADDs (total, per group, convention), params, proxy top-1,
per-epoch curve, wall time, device and, when it did not train, why.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from ccsearch.arch import spec_digest
from ccsearch.madds import count_madds
from ccsearch.search.pruning import should_prune
from ccsearch.search.space import SearchSpace
from ccsearch.search.study import StudyConfig
from ccsearch.train import DeviceData, ProxyConfig, train_candidate

# ``status`` values of candidates that were trained (fully or until pruned): they count
# towards the study's trials and are never trained again.  Only "ok" ones can be on the
# Pareto front; the others are infeasible, duplicate, surplus, failed or interrupted.
EVALUATED = ("ok", "diverged", "pruned")


def is_training(trial: optuna.trial.FrozenTrial) -> bool:
    """Running and past its checks: it holds one of the study's training slots."""
    return (
        trial.state == optuna.trial.TrialState.RUNNING
        and trial.user_attrs.get("stage") == "training"
    )


class TrialFailed(Exception):
    """A candidate could not be evaluated for a reason outside the architecture (e.g. OOM)."""


@dataclass
class Objective:
    config: StudyConfig
    space: SearchSpace
    proxy: ProxyConfig
    data: DeviceData
    device: str
    # Called with (epoch, top1) after every epoch: how the Ray backend feeds ASHA.
    report: Callable[[int, float], None] | None = None

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        start = time.perf_counter()
        try:
            return self._evaluate(trial, start)
        except KeyboardInterrupt:  # Optuna fails the trial; --resume retries it
            self._record(trial, "interrupted", "stopped by Ctrl-C", start)
            raise

    def _evaluate(self, trial: optuna.Trial, start: float) -> tuple[float, float]:
        spec = self.space.sample(trial, suggest_all=self.config.sampler == "grid")
        report = count_madds(spec, convention=self.config.convention)
        digest = spec_digest(spec)
        attrs: dict[str, Any] = {
            "spec": spec.to_dict(),
            "digest": digest,
            "madds": report.madds,
            "params": report.params,
            "group_madds": [g.madds for g in report.groups],
            "convention": report.convention,
            "budget": self.config.budget,
            "condconv_groups": spec.condconv_groups(),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        # Feasible when <= 0; NSGA-II and TPE rank infeasible candidates below feasible ones.
        # A retried trial inherits the same value from its failed twin: no warning for that.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The constraint value is ignored")
            trial.set_constraint("madds_over_budget", report.madds - self.config.budget)

        if report.madds > self.config.budget:  # never trained: costs milliseconds
            return self._finish(
                trial,
                "infeasible",
                0.0,
                report.madds,
                start,
                reason=f"{report.madds:,} MADDs over the budget of {self.config.budget:,}",
            )
        twin = self._earlier_twin(trial, digest)
        if twin is not None:
            if twin.state == optuna.trial.TrialState.COMPLETE:
                for key in ("top1", "curve", "status"):
                    trial.set_user_attr(f"twin_{key}", twin.user_attrs.get(key))
                return self._finish(
                    trial,
                    "duplicate",
                    twin.values[0],
                    report.madds,
                    start,
                    reason=f"same architecture as trial {twin.number}",
                )
            self._stop(
                trial,
                "duplicate",
                f"same architecture as trial {twin.number} ({twin.state.name.lower()})",
                start,
            )
        trial.set_user_attr("stage", "training")  # the claim, recorded before counting claims
        if self._enough_trained(trial):  # the controller stops the loop on a surplus trial
            self._stop(trial, "surplus", "the study already has its trials", start)
        seed = self.config.seed + trial.number
        # Known before training: kept even if the trial is stopped from outside (Ray's ASHA).
        before = {
            "device": self.device,
            "proxy": self.proxy.name,
            "data": self.data.description,
            "smoke_test": self.data.smoke_test,
            "seed": seed,
        }
        for key, value in before.items():
            trial.set_user_attr(key, value)
        curve: list[float] = []

        def on_epoch(epoch: int, top1: float) -> bool:
            curve.append(top1)
            trial.set_user_attr("curve", list(curve))
            if self.report is not None:
                self.report(epoch, top1)
            return should_prune(
                self.config.pruner,
                trial.study,
                trial.number,
                epoch,
                top1,
                self.proxy.epochs,
                startup=self.config.startup_trials,
            )

        result = train_candidate(spec, self.proxy, self.data, self.device, on_epoch, seed=seed)
        for key in ("curve", "losses", "epochs", "images_per_sec", "device", "reason"):
            trial.set_user_attr(key, getattr(result, key))
        trial.set_user_attr("train_time", result.wall_time)
        trial.set_user_attr("top1", result.top1)
        if result.status == "failed":
            self._record(trial, "failed", result.reason, start)
            raise TrialFailed(result.reason)
        if result.status == "pruned":
            self._stop(trial, "pruned", result.reason, start)
        top1 = result.top1 if result.status == "ok" and result.top1 is not None else 0.0
        return self._finish(trial, result.status, top1, report.madds, start, reason=result.reason)

    # ---- helpers ------------------------------------------------------------------------

    def _earlier_twin(self, trial: optuna.Trial, digest: str) -> optuna.trial.FrozenTrial | None:
        """A trial of the same architecture that was (or is being) trained before this one."""
        running = optuna.trial.TrialState.RUNNING
        for other in trial.study.get_trials(deepcopy=False):
            if other.number == trial.number or other.user_attrs.get("digest") != digest:
                continue
            if other.user_attrs.get("status") in EVALUATED:
                return other
            # Digests are recorded before this check, so of two workers sampling the same
            # architecture at once, the later trial number always sees the earlier one.
            if other.state == running and other.number < trial.number:
                return other
        return None

    def _enough_trained(self, trial: optuna.Trial) -> bool:
        """Trained or training trials before this one already reach the target (race-free:
        of two workers claiming at once, only the later trial number backs off)."""
        count = 0
        for other in trial.study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            if other.user_attrs.get("status") in EVALUATED or (
                other.number < trial.number and is_training(other)
            ):
                count += 1
        return count >= self.config.trials

    @staticmethod
    def _record(trial: optuna.Trial, status: str, reason: str, start: float) -> None:
        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("wall_time", time.perf_counter() - start)

    def _finish(self, trial, status: str, top1: float, madds: int, start: float, reason: str = ""):
        self._record(trial, status, reason, start)
        return top1, float(madds)

    def _stop(self, trial: optuna.Trial, status: str, reason: str, start: float) -> None:
        self._record(trial, status, reason, start)
        raise optuna.TrialPruned(reason)
