"""A study's trials as a pandas table, and its Pareto front (top-1 up, MADDs down).

Everything comes from what each trial recorded (``ccsearch/search/record.py``),
so results work the same whichever backend or machine ran the trials.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from ccsearch.errors import UserError
from ccsearch.madds import format_madds
from ccsearch.search.bulk_read import all_trials
from ccsearch.search.record import Status, TrialRecord, read

BASELINE = "baseline"  # the reference name the shipped studies give the backbone alone

COLUMNS = [
    "trial",
    "state",
    "status",
    "reference",  # the study's name for a reference candidate (baseline, paper), else ""
    "top1",  # proxy top-1 (%) of a candidate trained to the end (mean of its seeds)
    "top1_std",  # over its training seeds, when the study trains several
    "vs_baseline",  # top1 minus the trained ``baseline`` reference's, in points
    "last_top1",  # top-1 at the last epoch run: where a pruned candidate stopped
    "madds",
    "moe_madds",  # the same network with each CondConv layer as E separate convolutions
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
    return records_table([read(t) for t in all_trials(study)], folder)


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
                "vs_baseline": None,
                "last_top1": r.curve[-1] if r.curve else None,
                "madds": r.madds if r.spec else None,
                "moe_madds": r.moe_madds or None,  # 0: recorded before ccsearch counted it
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
    table = table.astype({"top1": float, "top1_std": float, "vs_baseline": float,
                          "last_top1": float, "madds": "Int64", "moe_madds": "Int64",
                          "budget": "Int64", "params": "Int64"})
    baseline = baseline_top1(table)
    if baseline is not None:
        table["vs_baseline"] = table["top1"] - baseline
    return table


def baseline_top1(table: pd.DataFrame) -> float | None:
    """Proxy top-1 of the study's ``baseline`` reference (the backbone without CondConv),
    or None until it is trained: what every result's "+x.x points" is measured against."""
    rows = table[(table["reference"] == BASELINE) & table["top1"].notna()]
    return float(rows["top1"].iloc[0]) if not rows.empty else None


def points_over_baseline(vs_baseline: float | None, reference: str = "") -> str:
    """``+1.2 points over the baseline`` for a row's ``vs_baseline``, or "" where there is
    no trained baseline or the row is the baseline itself."""
    if vs_baseline is None or pd.isna(vs_baseline) or reference == BASELINE:
        return ""
    return points_against(vs_baseline, "the baseline")


def points_against(difference: float, other: str) -> str:
    """``+1.2 points over the baseline`` / ``3.4 points under the paper``: one wording."""
    if difference < 0:
        return f"{-difference:.1f} points under {other}"
    return f"{difference:+.1f} points over {other}"


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


def _routing_key(table: pd.DataFrame) -> pd.Series:
    """The routing activations a candidate uses ("sigmoid", "relu/sigmoid"); none: NaN."""
    names = {v: "/".join(sorted(set(v.split(",")))) for v in table["routing"].unique() if v != "-"}
    return table["routing"].map(names)


def _se_key(table: pd.DataFrame) -> pd.Series:
    se, cc = table["se"] != "-", table["condconv"] != "-"
    kinds = np.select([se & cc, se, cc], ["SE + CondConv", "SE", "CondConv"], "baseline")
    return pd.Series(kinds, index=table.index)


# The paper's comparisons: what each trained candidate is, for each of them.
COMPARISONS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "routing activation": _routing_key,
    "CondConv placement (block groups)": lambda t: t["condconv"].replace("-", "none"),
    "SE vs CondConv": _se_key,
}


def compared(trained: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per comparison whose trained candidates differ (at least two kinds), those rows with
    their kind in ``key``; a routing comparison leaves out candidates without CondConv."""
    shown = {}
    for title, key in COMPARISONS.items():
        keys = key(trained)
        if keys.nunique() >= 2:  # NaN (no CondConv for a routing comparison) not counted
            shown[title] = trained.assign(key=keys).dropna(subset=["key"])
    return shown


def comparison_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per kind of a comparison (``compared``): mean and spread of the proxy top-1
    over its trials, their number, the mean MADDs and the points over the baseline."""
    grouped = rows.groupby("key", sort=True)
    return pd.DataFrame({
        "top1": grouped["top1"].mean(),
        "std": grouped["top1"].std(),  # NaN for a single trial
        "trials": grouped["top1"].count(),
        "madds": grouped["madds"].apply(lambda m: m.astype(float).mean()),
        "vs_baseline": grouped["vs_baseline"].mean(),
    })


def summary_counts(table: pd.DataFrame) -> dict[str, int]:
    return {status: int(n) for status, n in table["status"].value_counts().items()}


def select_trial(study: optuna.Study, which: str, budget: int | None = None) -> TrialRecord:
    """``best`` (the most accurate trained candidate on the feasible front, under
    ``budget`` when given), a trial number or a reference's name (``baseline``, ``paper``),
    which must be a trained candidate."""
    records = [read(t) for t in all_trials(study)]
    references = sorted({r.reference for r in records if r.reference})
    if which in references:  # a retried reference: its trained trial
        named = [r for r in records if r.reference == which]
        which = str(next((r for r in named if r.status == Status.OK), named[-1]).number)
    if which == "best":
        front = pareto_front(records_table(records))
        if budget is not None:
            front = front[front["madds"] <= budget]
        top = best_on_front(front)
        if top is None:
            under = f" under {format_madds(budget)} MADDs" if budget is not None else ""
            raise UserError(f"study {study.study_name!r} has no trained candidate{under}")
        return records[int(top["trial"])]
    if not which.isdigit():
        named = f", or a reference: {', '.join(references)}" if references else ""
        raise UserError(f"--trial {which!r}: use best or a trial number{named}")
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

