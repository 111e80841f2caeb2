"""The claim and stop policy: which trial may train, and when a study is done.

Trials reach these checks in any order, at any time, from any machine: a storage gives
no compare-and-swap, only writes and reads that every process sees in one order.  So a
trial first *writes* its claim (its digest and ``Stage.TRAINING``), then *reads* every
trial, and backs off when a trial *ahead* of it already takes a slot or its
architecture.  A trial is ahead of trial ``n`` when it

- is recorded as trained (whatever its number), or
- holds a slot and has a lower number, or
- holds a slot and is committing (about to record its result, whatever its number).

The check runs when a trial claims, after every epoch, and once more after it writes
``Stage.COMMITTING`` and before it records its result.  Of two trials that conflict,
the later reader sees the other's claim; the lower number wins a claim, and a
committing trial wins over any trial that claims after it.  So a study never trains
more than ``trials`` candidates nor one digest twice; a trial that loses mid-training
is recorded ``backed_off`` and its slot goes to the winner.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccsearch.search.record import Stage, Status, TrialRecord, TrialState


@dataclass(frozen=True)
class Verdict:
    """``status`` None: go on training; else stop with that status and reason."""

    status: Status | None = None
    reason: str = ""
    twin: TrialRecord | None = None  # the trained trial a duplicate takes its result from


GO = Verdict()


def trained(records: list[TrialRecord]) -> int:
    """Candidates trained (fully or until pruned): what the study's ``trials`` counts."""
    return sum(r.trained for r in records)


def done(records: list[TrialRecord], wanted: int) -> bool:
    return trained(records) >= wanted


def slots_taken(records: list[TrialRecord]) -> int:
    """Trained candidates plus those training now."""
    return sum(r.trained or r.holds_slot for r in records)


def slots_full(records: list[TrialRecord], wanted: int) -> bool:
    """No slot free now; one may free again if a claimant backs off or dies."""
    return slots_taken(records) >= wanted


def _ahead(other: TrialRecord, number: int) -> bool:
    if other.number == number:
        return False
    if other.trained:
        return True
    return other.holds_slot and (other.number < number or other.stage == Stage.COMMITTING)


def check(number: int, digest: str, records: list[TrialRecord], wanted: int) -> Verdict:
    """May trial ``number`` (claim written) train ``digest``?  See the module docstring."""
    ahead = [r for r in records if _ahead(r, number)]
    twins = [r for r in ahead if r.digest == digest]
    finished = [r for r in twins if r.trained]
    if finished:
        return Verdict(Status.DUPLICATE, f"same architecture as trial {finished[0].number}",
                       twin=finished[0])
    if twins:
        return Verdict(
            Status.BACKED_OFF,
            f"same architecture as trial {twins[0].number}, which is training",
        )
    if len(ahead) >= wanted:
        numbers = ", ".join(str(r.number) for r in ahead[:wanted])
        return Verdict(
            Status.BACKED_OFF,
            f"the study's {wanted} training slots are taken (trials {numbers})",
        )
    return GO


def twin_values(twin: TrialRecord) -> list[float] | None:
    """What a duplicate is told: its twin's values, or 0 if the twin was pruned."""
    if twin.state == TrialState.COMPLETE or twin.status in (Status.OK, Status.DIVERGED):
        return twin.values()
    return [0.0, float(twin.madds)]
