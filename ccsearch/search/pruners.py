"""Pruning hopeless candidates by their per-epoch accuracy curves.

Optuna cannot prune multi-objective studies (``trial.report`` raises there), and MADDs
are known before training, so only the accuracy curve can decide.  Every trained trial
records its per-epoch validation curve; a pruner compares a running trial's accuracy at
epoch ``e`` with the curves of its peers.  As in Optuna's ``MedianPruner``, the peers
are the trials whose proxy training finished (status ``ok``): partial curves of running,
pruned or interrupted trials would bias the rule and differ between workers.

The Ray backend uses Ray's ASHA scheduler on the same per-epoch metric instead.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Protocol

from ccsearch.search.record import Status, TrialRecord


def finished_curves(records: list[TrialRecord]) -> list[list[float]]:
    """The peers' curves: trials whose proxy training ran to its last epoch."""
    return [r.curve for r in records if r.status == Status.OK and r.curve]


class Pruner(Protocol):
    def should_prune(self, epoch: int, top1: float, epochs: int, peers: list[list[float]]) -> bool:
        """Stop at ``epoch`` (1-based) of ``epochs`` with accuracy ``top1``?"""
        ...


@dataclass(frozen=True)
class NoPruner:
    def should_prune(self, epoch: int, top1: float, epochs: int, peers: list[list[float]]) -> bool:
        return False


@dataclass(frozen=True)
class MedianPruner:
    """Below the median of the peers at the same epoch (after ``startup`` peers)."""

    startup: int = 4

    def should_prune(self, epoch: int, top1: float, epochs: int, peers: list[list[float]]) -> bool:
        at = [c[epoch - 1] for c in peers if len(c) >= epoch]
        if epoch >= epochs or len(peers) < self.startup or not at:
            return False
        return top1 < statistics.median(at)


@dataclass(frozen=True)
class SuccessiveHalvingPruner:
    """Rungs at epochs 1, 2, 4, ...: at a rung keep only the top 1/``eta``."""

    startup: int = 4
    eta: int = 2

    def should_prune(self, epoch: int, top1: float, epochs: int, peers: list[list[float]]) -> bool:
        if epoch >= epochs or len(peers) < self.startup or epoch & (epoch - 1):
            return False
        ranked = sorted([*(c[epoch - 1] for c in peers if len(c) >= epoch), top1], reverse=True)
        keep = max(1, len(ranked) // self.eta)
        return top1 < ranked[keep - 1]


def make_pruner(name: str, startup: int) -> Pruner:
    """The pruner a study names (``StudyConfig.pruner``)."""
    pruners = {
        "none": NoPruner(),
        "median": MedianPruner(startup),
        "successive_halving": SuccessiveHalvingPruner(startup),
    }
    return pruners[name]
