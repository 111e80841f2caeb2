"""Shared by the search tests: a tiny study on disk and the checks every finished study passes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from ccsearch.search.record import Stage, Status, TrialRecord, read_all

BUDGET = 42_000_000  # MobileNetV1 0.25x is 41.0M; 32 experts in layer 12 or 13 go over it
# What every trained trial's record holds (a trial stopped by ASHA has no losses).
TRAINED_FIELDS = ("spec", "digest", "madds", "params", "group_madds", "top1", "curve",
                  "train_time", "wall_time", "device", "proxy", "data", "owner", "worker")


def write_tiny_study(tmp_path: Path, pruner: str = "none", trials: int = 3, sampler: str = "random",
                     space: str = "", budget: str = "42M") -> Path:
    """A small, fast study: one of layers 11-13 of MobileNetV1 0.25x gets 2, 4 or 32 experts."""
    (tmp_path / "space.yaml").write_text(space or (
        "backbone: mobilenet_v1\nwidth: [0.25]\ngroups: [11, 12, 13]\nplacement: one\n"
        "allow_static: true\nshared: true\nexperts: [2, 4, 32]\nrouting: [sigmoid, softmax]\n"
    ))
    (tmp_path / "proxy.yaml").write_text(
        "data: digits\nresolution: 32\nepochs: 2\nbatch_size: 64\nlr: 0.1\ncrop_padding: 1\nflip: false\n"
    )
    (tmp_path / "study.yaml").write_text(
        f"name: tiny\nsearch_space: {tmp_path / 'space.yaml'}\nbudget: {budget}\n"
        f"proxy: {tmp_path / 'proxy.yaml'}\nsampler: {sampler}\npruner: {pruner}\ntrials: {trials}\nseed: 1\n"
    )
    return tmp_path


# Layers 12 and 13 of MobileNetV1 0.25x with 32 experts, or neither: 3 architectures,
# all within a budget of 44M (41.0M, 42.1M and 43.2M).
THREE_ARCHITECTURES = (
    "backbone: mobilenet_v1\nwidth: [0.25]\ngroups: [12, 13]\nplacement: one\n"
    "allow_static: true\nshared: true\nexperts: [32]\nrouting: [sigmoid]\n"
)


def load(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def records_of(out: Path) -> list[TrialRecord]:
    """A run's records, once its study exists (study.yaml is written after the schema)."""
    return read_all(load(out)) if (out / "study.yaml").exists() else []


def training(records: list[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.running and r.stage == Stage.TRAINING]


def assert_study_sound(study: optuna.Study, trained: int, budget: int = BUDGET) -> None:
    records = read_all(study)
    assert not [r.number for r in records if r.state == optuna.trial.TrialState.RUNNING]
    done = [r for r in records if r.trained]
    assert len(done) == trained, [(r.number, r.status, r.reason) for r in records]
    digests = [r.digest for r in done]
    assert len(set(digests)) == len(digests), "no architecture trained twice"
    for r in records:
        if r.madds > budget:
            assert r.status == Status.INFEASIBLE and not r.curve
    for r in done:
        missing = [f for f in TRAINED_FIELDS if getattr(r, f) in (None, "", [], 0)]
        assert not missing, f"trial {r.number} lacks {missing}"
        assert r.madds <= budget
        if r.status == Status.OK:
            assert study.trials[r.number].values == [r.top1, r.madds]


def wait_for(what: str, condition, proc=None, timeout: float = 300):
    """Poll an observable state (the study, a process) until ``condition()`` holds; its value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (code {proc.returncode}) before {what}")
        got = condition()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def cli_argv(*args: str) -> list[str]:
    """The CLI in a child Python; faulthandler lets ``stop`` show where a hung one waits."""
    return [sys.executable, "-X", "faulthandler", "-m", "ccsearch.cli", *args]


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> tuple[str, str]:
    """Signal ``proc`` and wait for its end, reading its pipes (``wait`` alone can deadlock
    on a full pipe); its (stdout, stderr).  If it hangs, the failure shows every thread's
    traceback (SIGABRT makes faulthandler print them)."""
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"still running {timeout:g} s after signal {sig}; its threads:\n{(err or '')[-8000:]}")


def reference_runs(tmp: Path) -> tuple[Path, Path]:
    """Two run folders of one real tiny study, as the dashboards and results read them.

    ``ccsearch run`` trains the static MobileNetV1 0.25x as the ``baseline`` reference and
    CondConv in layer 12 (layer 13 is over the 42.5M budget; the grid's static point is a
    duplicate of the baseline), 2 seeds of 2 epochs each, with their routing statistics.
    One trial is added as the study would record a pruned one (layer 12 stopped after its
    first epoch: pruning itself is tested in test_policy.py).  The second folder is a copy
    of the first, for several-run dashboards.
    """
    import contextlib
    import io
    import shutil
    from dataclasses import replace

    from ccsearch.cli import main
    from ccsearch.search import run
    from ccsearch.search.record import KEY, STATE

    write_tiny_study(tmp, sampler="grid", trials=1, space=THREE_ARCHITECTURES, budget="42.5M")
    with open(tmp / "study.yaml", "a") as f:
        f.write("repeats: 2\nreferences:\n  baseline: {model: mobilenet_v1, width: 0.25}\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", "--study", str(tmp / "study.yaml"), "--out", str(tmp / "run"),
                     "--quiet"]) == 0
    (tmp / "run_output.txt").write_text(printed.getvalue())  # what `ccsearch run` printed
    search = run.open_folder(tmp / "run")
    trained = [r for r in search.records() if r.status == Status.OK and not r.reference]
    pruned = replace(trained[0], status=Status.PRUNED, top1=None, curve=trained[0].curve[:1],
                     epochs=1, digest=trained[0].digest + "p", routing_stats={})
    search.study.add_trial(optuna.trial.create_trial(
        state=STATE[Status.PRUNED], user_attrs={KEY: pruned.to_dict()}))
    run.finalize(search)  # results.csv, pareto.html (the default dashboard), best_arch.json
    shutil.copytree(tmp / "run", tmp / "run2")
    return tmp / "run", tmp / "run2"
