"""A study's trials as a pandas table, and its Pareto front (top-1 up, MADDs down).

Everything comes from what each trial recorded (see ``ccsearch/search/objective.py``),
so results work the same whichever backend or machine ran the trials.
"""

from __future__ import annotations

import optuna
import pandas as pd

COLUMNS = [
    "trial",
    "state",
    "status",
    "top1",
    "madds",
    "params",
    "condconv",
    "experts",
    "routing",
    "epochs",
    "train_time",
    "device",
    "reason",
    "digest",
]


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        groups = (a.get("spec") or {}).get("groups", [])
        cc = [i for i, g in enumerate(groups, start=1) if g.get("experts")]
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "status": a.get(
                    "status", "running" if t.state.name == "RUNNING" else t.state.name.lower()
                ),
                "top1": a.get("top1") if a.get("status") == "ok" else None,
                "madds": a.get("madds"),
                "params": a.get("params"),
                "condconv": ",".join(map(str, cc)) or "-",
                "experts": ",".join(str(groups[i - 1]["experts"]) for i in cc) or "-",
                "routing": ",".join(groups[i - 1]["routing"] for i in cc) or "-",
                "epochs": a.get("epochs"),
                "train_time": a.get("train_time"),
                "device": a.get("device"),
                "reason": a.get("reason", ""),
                "digest": a.get("digest"),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Trained, in-budget candidates that no other beats on both top-1 and MADDs."""
    ok = table[(table["status"] == "ok") & table["top1"].notna()]
    ok = ok.sort_values(["madds", "top1"], ascending=[True, False]).drop_duplicates("digest")
    best = float("-inf")
    keep = []
    for index, row in ok.iterrows():  # by rising MADDs: keep each new best accuracy
        if row["top1"] > best:
            keep.append(index)
            best = row["top1"]
    return ok.loc[keep]


def best_on_front(front: pd.DataFrame) -> pd.Series | None:
    """The front's most accurate candidate (ties: fewer MADDs), or None on an empty front."""
    if front.empty:
        return None
    return front.sort_values(["top1", "madds"], ascending=[False, True]).iloc[0]


def summary_counts(table: pd.DataFrame) -> dict[str, int]:
    return {status: int(n) for status, n in table["status"].value_counts().items()}
