"""A study's trials as a pandas table, and its Pareto front (top-1 up, MADDs down).

Everything comes from what each trial recorded (``ccsearch/search/record.py``),
so results work the same whichever backend or machine ran the trials.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd

from ccsearch.errors import UserError
from ccsearch.madds import format_madds
from ccsearch.search.record import Status, TrialRecord, read_all

COLUMNS = [
    "trial",
    "state",
    "status",
    "reference",  # the study's name for a reference candidate (baseline, paper), else ""
    "top1",  # proxy top-1 (%) of a candidate trained to the end (mean of its seeds)
    "top1_std",  # over its training seeds, when the study trains several
    "last_top1",  # top-1 at the last epoch run: where a pruned candidate stopped
    "madds",
    "budget",
    "params",
    "condconv",  # the CondConv block groups, then per group its experts and routing
    "experts",
    "routing",
    "se",  # the block groups with squeeze-excite
    "epochs",
    "train_time",
    "wall_time",
    "device",
    "worker",
    "seed",
    "reason",
    "digest",
    "retrain",
]


def trials_table(study: optuna.Study, folder: Path | None = None) -> pd.DataFrame:
    """One row per trial, in trial order; with the run ``folder``, the ``retrain`` column
    holds the command that retrains each trained trial exactly."""
    return records_table(read_all(study), folder)


def records_table(records: list[TrialRecord], folder: Path | None = None) -> pd.DataFrame:
    """``trials_table`` of records already read (a dashboard reads a study once)."""
    from ccsearch.search.reproduce import train_command

    rows = []
    for r in records:
        groups = (r.spec or {}).get("groups", [])
        cc = [i for i, g in enumerate(groups, start=1) if g.get("experts")]
        status = r.status.value if r.status is not None else r.state.name.lower()
        rows.append(
            {
                "trial": r.number,
                "state": r.state.name,
                "status": status,
                "reference": r.reference,
                "top1": r.top1 if r.status == Status.OK else None,
                "top1_std": r.top1_std if r.status == Status.OK else None,
                "last_top1": r.curve[-1] if r.curve else None,
                "madds": r.madds if r.spec else None,
                "budget": r.budget or None,
                "params": r.params if r.spec else None,
                "condconv": ",".join(map(str, cc)) or "-",
                "experts": ",".join(str(groups[i - 1]["experts"]) for i in cc) or "-",
                "routing": ",".join(groups[i - 1]["routing"] for i in cc) or "-",
                "se": ",".join(str(i) for i, g in enumerate(groups, 1) if g.get("se")) or "-",
                "epochs": r.epochs,
                "train_time": r.train_time,
                "wall_time": r.wall_time,
                "device": r.device,
                "worker": r.worker,
                "seed": r.seed,
                "reason": r.reason,
                "digest": r.digest or None,
                "retrain": train_command(folder, r) if folder is not None and r.trained else "",
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    # Typed whatever the first rows hold: None reads as missing, counts stay integers.
    return table.astype({"top1": float, "top1_std": float, "last_top1": float,
                         "madds": "Int64", "budget": "Int64", "params": "Int64"})


def table_json(table: pd.DataFrame) -> str:
    """A list of row objects, missing values as null, floats in full: what
    ``pd.read_json(text, orient="records", dtype=False)`` reads back as the same table."""
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return json.dumps(rows, indent=1) + "\n"


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Trained, in-budget candidates that no other beats on both top-1 and MADDs.

    The one rule for the front: ``ccsearch results --pareto``, the dashboards, the run's
    ``best_arch.json`` and ``export --trial best`` all call it.  Ties stay: two architectures with equal top-1 and MADDs are both on the front. An
    architecture trained twice appears once, by its best run.
    """
    ok = table[(table["status"] == "ok") & table["top1"].notna()]
    if "budget" in ok:  # a reference trained over the budget is shown, never on the front
        ok = ok[~(ok["madds"].astype(float) > ok["budget"].astype(float))]
    ok = ok.sort_values(["top1", "madds"], ascending=[False, True], kind="stable")
    ok = ok[ok["digest"].isna() | ~ok.duplicated("digest")]
    ok = ok.sort_values("madds", kind="stable")  # ties in MADDs keep the better top-1 first
    top1, madds = ok["top1"].astype(float), ok["madds"].astype(float)
    best_here = top1.groupby(madds).transform("max")  # best top-1 at this very MADD count
    # Best top-1 at strictly fewer MADDs: the running max, shifted past this MADD count.
    best_below = best_here.groupby(madds).first().cummax().shift(fill_value=float("-inf"))
    keep = (top1 == best_here) & (top1 > madds.map(best_below))
    return ok[keep.to_numpy()]


def best_on_front(front: pd.DataFrame) -> pd.Series | None:
    """The front's most accurate candidate (ties: fewer MADDs), or None on an empty front."""
    if front.empty:
        return None
    return front.sort_values(["top1", "madds"], ascending=[False, True]).iloc[0]


def summary_counts(table: pd.DataFrame) -> dict[str, int]:
    return {status: int(n) for status, n in table["status"].value_counts().items()}


def select_trial(study: optuna.Study, which: str, budget: int | None = None) -> TrialRecord:
    """``best`` (the most accurate trained candidate on the feasible front, under
    ``budget`` when given) or a trial number, which must be a trained candidate."""
    records = read_all(study)
    if which == "best":
        front = pareto_front(trials_table(study))
        if budget is not None:
            front = front[front["madds"] <= budget]
        top = best_on_front(front)
        if top is None:
            under = f" under {format_madds(budget)} MADDs" if budget is not None else ""
            raise UserError(f"study {study.study_name!r} has no trained candidate{under}")
        return records[int(top["trial"])]
    if not which.isdigit():
        raise UserError(f"--trial {which!r}: use best or a trial number")
    number = int(which)
    if number >= len(records):
        raise UserError(f"--trial {number}: the study has trials 0 to {len(records) - 1}")
    record = records[number]
    if record.status == Status.DUPLICATE and record.twin is not None:
        raise UserError(f"--trial {number} is a duplicate of trial {record.twin}: export that one")
    if record.status != Status.OK:
        status = record.status.value if record.status else "still running"
        reason = f" ({record.reason})" if record.reason else ""
        raise UserError(f"--trial {number} was not trained to the end: {status}{reason}")
    if budget is not None and record.madds > budget:
        raise UserError(f"--trial {number} has {format_madds(record.madds)} MADDs, over --budget")
    return record

