"""Pruning hopeless candidates in a two-objective study.

Optuna cannot prune multi-objective studies (``trial.report`` raises there), and MADDs
are known before training, so only the accuracy curve can decide.  ccsearch stores each
trained trial's per-epoch validation curve (``curve`` user attribute) and applies the
classic rules to those curves:

- ``median``: stop at epoch e when the accuracy is below the median of the other
  trials' accuracy at epoch e (after ``startup`` trained trials; never at the last epoch).
- ``successive_halving``: rungs at epochs 1, 2, 4, ...; at a rung keep only the top
  1/``eta`` of the trials that reached it.

The Ray backend uses Ray's ASHA scheduler on the same per-epoch metric instead.
"""

from __future__ import annotations

import statistics

import optuna


def curves_at(study: optuna.Study, epoch: int, exclude: int) -> list[float]:
    """Accuracy at ``epoch`` of every other trial that trained that far."""
    values = []
    for trial in study.get_trials(deepcopy=False):
        curve = trial.user_attrs.get("curve") or []
        if trial.number != exclude and len(curve) >= epoch:
            values.append(curve[epoch - 1])
    return values


def should_prune(
    rule: str,
    study: optuna.Study,
    trial_number: int,
    epoch: int,
    top1: float,
    epochs: int,
    startup: int = 4,
    eta: int = 2,
) -> bool:
    if rule == "none" or epoch >= epochs:
        return False
    others = curves_at(study, epoch, exclude=trial_number)
    if len(others) < startup:
        return False
    if rule == "median":
        return top1 < statistics.median(others)
    if rule == "successive_halving":
        if epoch & (epoch - 1):  # rungs at powers of two only
            return False
        ranked = sorted([*others, top1], reverse=True)
        keep = max(1, len(ranked) // eta)
        return top1 < ranked[keep - 1]
    raise ValueError(f"unknown pruning rule {rule!r}")
