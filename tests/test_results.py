"""The Pareto front: exactly the non-dominated trained candidates, ties included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ccsearch.results import COLUMNS, pareto_front


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{c: row.get(c) for c in COLUMNS} for row in rows], columns=COLUMNS)


def brute_force_front(t: pd.DataFrame) -> set:
    """Index labels of the non-dominated rows, one per digest (its best row, first on ties)."""
    ok = t[(t["status"] == "ok") & t["top1"].notna()]
    best: dict = {}
    for index, row in ok.iterrows():
        kept = best.setdefault(row["digest"], index)
        if (row["top1"], -row["madds"]) > (ok.at[kept, "top1"], -ok.at[kept, "madds"]):
            best[row["digest"]] = index
    rows = [(i, ok.at[i, "top1"], ok.at[i, "madds"]) for i in best.values()]
    front = set()
    for i, top1, madds in rows:
        dominated = any(
            t2 >= top1 and m2 <= madds and (t2 > top1 or m2 < madds) for _, t2, m2 in rows
        )
        if not dominated:
            front.add(i)
    return front


def test_equal_architectures_on_the_front_are_all_kept():
    t = table(
        [
            dict(trial=0, status="ok", top1=0.7, madds=300, digest="a"),
            dict(trial=1, status="ok", top1=0.7, madds=300, digest="b"),  # a tie: also on front
            dict(trial=2, status="ok", top1=0.7, madds=300, digest="a"),  # a's duplicate
            dict(trial=3, status="ok", top1=0.6, madds=300, digest="c"),  # dominated
            dict(trial=4, status="ok", top1=0.8, madds=320, digest="d"),
            dict(trial=5, status="ok", top1=0.8, madds=330, digest="e"),  # dominated by d
            dict(trial=6, status="over_budget", top1=None, madds=100, digest="f"),
            dict(trial=7, status="ok", top1=None, madds=100, digest="g"),
            dict(trial=8, status="pruned", top1=0.9, madds=100, digest="h"),
        ]
    )
    front = pareto_front(t)
    assert list(front["trial"]) == [0, 1, 4]
    assert list(front.columns) == COLUMNS


@pytest.mark.parametrize("seed", range(5))
def test_front_matches_brute_force_on_a_random_table(seed):
    rng = np.random.default_rng(seed)
    n = 200
    digests = rng.integers(0, 120, n)  # repeats: the same architecture trained twice
    madds_of = rng.integers(1, 15, 120) * 10  # few distinct MADDs: many ties
    t = pd.DataFrame(
        {
            "trial": np.arange(n),
            "status": rng.choice(["ok", "ok", "ok", "pruned", "over_budget"], n),
            # Rising with MADDs, so the front is long; coarse, so accuracies tie often.
            "top1": (madds_of[digests] // 10 + rng.integers(0, 4, n)) / 20,
            "madds": madds_of[digests],
            "digest": [f"d{d}" for d in digests],
        }
    )
    t.loc[rng.random(n) < 0.1, "top1"] = np.nan
    t = t.reindex(columns=COLUMNS).set_index(pd.Index(rng.permutation(n) + 1000))
    front = pareto_front(t)
    expected = brute_force_front(t)
    assert set(front.index) == expected
    assert len(expected) > 3 and front["madds"].duplicated().any()  # the ties were exercised
    assert front["madds"].is_monotonic_increasing
    assert front["digest"].is_unique
    pd.testing.assert_frame_equal(front, t.loc[front.index])


def test_empty_front():
    assert pareto_front(table([dict(trial=0, status="pruned", top1=None, madds=1)])).empty
