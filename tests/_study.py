"""Shared by the search tests: a tiny study on disk and the checks every finished study passes."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna

from ccsearch.search.objective import EVALUATED

BUDGET = 42_000_000  # MobileNetV1 0.25x is 41.0M; 32 experts in layer 12 or 13 go over it
RECORD_FIELDS = (
    "spec", "digest", "madds", "params", "group_madds", "convention", "budget", "status",
    "top1", "curve", "losses", "train_time", "wall_time", "device", "proxy", "data", "seed",
)


def write_tiny_study(tmp_path: Path, pruner: str = "none") -> Path:
    """A small, fast study: one of layers 11-13 of MobileNetV1 0.25x gets 2, 4 or 32 experts."""
    (tmp_path / "space.yaml").write_text(
        "backbone: mobilenet_v1\nwidth: [0.25]\ngroups: [11, 12, 13]\nplacement: one\n"
        "allow_static: true\nshared: true\nexperts: [2, 4, 32]\nrouting: [sigmoid, softmax]\n"
    )
    (tmp_path / "proxy.yaml").write_text(
        "data: digits\nresolution: 32\nepochs: 2\nbatch_size: 64\nlr: 0.1\ncrop_padding: 1\nflip: false\n"
    )
    (tmp_path / "study.yaml").write_text(
        f"name: tiny\nsearch_space: {tmp_path / 'space.yaml'}\nbudget: 42M\n"
        f"proxy: {tmp_path / 'proxy.yaml'}\nsampler: random\npruner: {pruner}\ntrials: 3\nseed: 1\n"
    )
    return tmp_path


def load(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def assert_study_sound(study: optuna.Study, trained: int, stopped_lack: tuple[str, ...] = ()) -> None:
    """``stopped_lack``: fields a trial stopped from outside (Ray's ASHA) cannot have."""
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    evaluated = [t for t in trials if t.user_attrs.get("status") in EVALUATED]
    assert len(evaluated) == trained
    digests = [t.user_attrs["digest"] for t in evaluated]
    assert len(set(digests)) == len(digests), "no architecture trained twice"
    for t in trials:
        if t.user_attrs.get("madds", 0) > BUDGET:
            assert t.user_attrs["status"] == "infeasible" and "curve" not in t.user_attrs
    for t in evaluated:
        stopped = t.user_attrs.get("reason", "").startswith("ASHA stopped")
        missing = [f for f in RECORD_FIELDS if f not in t.user_attrs and not (stopped and f in stopped_lack)]
        assert not missing, f"trial {t.number} lacks {missing}"
        assert t.user_attrs["madds"] <= BUDGET


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ccsearch.cli", *args]


