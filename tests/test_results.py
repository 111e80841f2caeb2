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


# ---- ccsearch results --------------------------------------------------------------------


def _run_json(capsys, *argv: str) -> list[dict]:
    import json

    from ccsearch.cli import main

    assert main(["results", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def _synthetic_run(tmp_path):
    """A run folder whose trials were told directly: many ties, duplicates, a pruned and an
    over-budget trial, a reference and a reference trained over the budget."""
    import optuna
    from _study import write_tiny_study

    from ccsearch.search import load_study_config, run
    from ccsearch.search.record import KEY, STATE, Status, TrialRecord

    write_tiny_study(tmp_path, budget="100M")
    search = run.create(load_study_config(tmp_path / "study.yaml"), tmp_path / "run")
    rng = np.random.default_rng(3)
    spec = {"name": "x", "groups": [{"block": "ds", "experts": 0, "routing": "sigmoid"}]}
    trials = []
    for n in range(60):
        status = [Status.OK] * 6 + [Status.PRUNED, Status.INFEASIBLE, Status.DUPLICATE]
        status = status[rng.integers(len(status))]
        madds = int(rng.integers(1, 8)) * 10_000_000 + (200_000_000 if status == Status.INFEASIBLE else 0)
        top1 = float(rng.integers(50, 56))  # few values: ties on both objectives
        record = TrialRecord(spec=spec, digest=f"d{rng.integers(40)}", madds=madds,
                             budget=100_000_000, status=status, curve=[top1 - 5, top1])
        record.top1 = top1 if status == Status.OK else None
        if n == 5:
            record.reference, record.status, record.top1 = "baseline", Status.OK, 51.0
        if n == 6:  # a reference over the budget: shown, never on the front
            record.reference, record.status, record.top1, record.madds = "paper", Status.OK, 99.0, 150_000_000
        values = record.values([52.0, 1.0]) if STATE[record.status].is_finished() else None
        trials.append(optuna.trial.create_trial(state=STATE[record.status], values=values,
                                                user_attrs={KEY: record.to_dict()}))
    search.study.add_trials(trials)
    return tmp_path / "run"


def _brute_force(rows: list[dict]) -> set[int]:
    """The trials no other feasible trained trial beats, one per architecture (its best)."""
    ok = [r for r in rows if r["status"] == "ok" and r["top1"] is not None
          and r["madds"] <= r["budget"]]
    best = {}
    for r in ok:  # one row per architecture: the best, the earliest on ties
        kept = best.get(r["digest"])
        if kept is None or (r["top1"], -r["madds"]) > (kept["top1"], -kept["madds"]):
            best[r["digest"]] = r
    return {r["trial"] for r in best.values() if not any(
        o["top1"] >= r["top1"] and o["madds"] <= r["madds"]
        and (o["top1"] > r["top1"] or o["madds"] < r["madds"]) for o in best.values())}


def test_results_json_pareto_is_the_brute_force_front_ties_included(tmp_path, capsys):
    folder = _synthetic_run(tmp_path)
    rows = _run_json(capsys, str(folder))
    front = _run_json(capsys, str(folder), "--pareto")
    assert {r["trial"] for r in front} == _brute_force(rows)
    top = [(r["top1"], r["madds"]) for r in front]
    assert len(top) != len(set(top)), "ties (two architectures, same top-1 and MADDs) are kept"
    assert front == [r for r in sorted(rows, key=lambda r: r["madds"]) if r in front]
    assert 6 not in {r["trial"] for r in front}  # the paper design over the budget
    assert {r["reference"] for r in rows} == {"", "baseline", "paper"}
    pruned = next(r for r in rows if r["status"] == "pruned")
    assert pruned["top1"] is None and pruned["last_top1"] is not None
    for r in rows:  # every trained result against the baseline's 51.0%
        expected = None if r["top1"] is None else r["top1"] - 51.0
        assert r["vs_baseline"] == (pytest.approx(expected) if expected is not None else None)


def test_results_of_a_real_run_json_and_parquet_round_trip(tiny_runs, tmp_path, capsys):
    import io
    import statistics

    from ccsearch.cli import main
    from ccsearch.results import trials_table
    from ccsearch.search import run
    from ccsearch.search.record import read_all

    folder = str(tiny_runs[0])
    rows = _run_json(capsys, folder)
    assert {r["trial"] for r in _run_json(capsys, folder, "--pareto")} == _brute_force(rows)
    assert [r["status"] for r in rows].count("pruned") == 1
    pruned = next(r for r in rows if r["status"] == "pruned")
    assert pruned["top1"] is None and pruned["last_top1"] is not None  # where it stopped
    baseline = next(r for r in rows if r["reference"] == "baseline")
    record = read_all(run.open_folder(tiny_runs[0]).study)[baseline["trial"]]
    assert baseline["top1_std"] == pytest.approx(statistics.stdev(record.seed_top1))
    assert baseline["top1"] == pytest.approx(statistics.fmean(record.seed_top1))
    assert baseline["condconv"] == "-"
    assert baseline["vs_baseline"] == 0.0 and baseline["moe_madds"] == baseline["madds"]
    from ccsearch.arch import ArchSpec
    from ccsearch.madds import format_madds, moe_equivalent_madds

    records = read_all(run.open_folder(tiny_runs[0]).study)
    condconv = [r for r in rows if r["condconv"] != "-" and r["status"] == "ok"]
    assert condconv
    for r in condconv:
        assert r["vs_baseline"] == pytest.approx(r["top1"] - baseline["top1"])
        spec = ArchSpec.from_dict(records[r["trial"]].spec)
        assert r["moe_madds"] == moe_equivalent_madds(spec) > r["madds"]
    printed = (tiny_runs[0].parent / "run_output.txt").read_text()
    assert f"reference baseline: {baseline['top1']:.1f}% at {format_madds(baseline['madds'])}\n" in printed
    # A grid study compares: here the placement (layer 12 against none, the baseline).
    compared = printed.split("CondConv placement (block groups): mean proxy top-1 of the "
                             "trained candidates\n")[1].splitlines()
    for r in [baseline, *condconv]:
        kind = "none" if r["condconv"] == "-" else r["condconv"]
        line = next(line for line in compared if line.split()[0] == kind)
        assert f"{r['top1']:.1f}%" in line and f"{r['vs_baseline']:+.1f}" in line
    best = printed.split("best:")[1]
    top = rows[int(best.split("(trial ")[1].split(",")[0])]
    if top["reference"] == "baseline":  # nothing to measure the baseline against
        assert "the baseline;" not in best
    else:
        d = top["vs_baseline"]
        over = f"+{d:.1f} points over" if d >= 0 else f"{-d:.1f} points under"
        assert f"{over} the baseline; retrain it:" in best

    table = trials_table(run.open_folder(tiny_runs[0]).study, tiny_runs[0])
    assert rows[baseline["trial"]]["retrain"] == (
        f"ccsearch train --from-trial {tiny_runs[0]} {baseline['trial']}")
    assert main(["results", folder, "--format", "json", "-o", str(tmp_path / "t.json")]) == 0
    assert main(["results", folder, "--format", "parquet", "-o", str(tmp_path / "t.parquet")]) == 0
    assert capsys.readouterr().out.endswith(f"{len(table)} rows written to {tmp_path / 't.parquet'}\n")
    back = pd.read_json(tmp_path / "t.json", orient="records", dtype=False)
    pd.testing.assert_frame_equal(back.astype(table.dtypes.to_dict()), table)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), table)
    assert main(["results", folder, "--format", "csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(csv.columns) == COLUMNS and len(csv) == len(table)

    assert main(["results", "--storage", f"sqlite:///{folder}/study.db", "--study", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "baseline" in text and "pruned" in text and f"±{baseline['top1_std']:.1f}" in text
