"""``ccsearch run --backend ray``: a real local Ray, real trials, records in the Optuna storage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _study import assert_study_sound, cli_argv, load, write_tiny_study

from ccsearch.cli import main
from ccsearch.search.objective import EVALUATED

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head():
    """A one-machine Ray cluster started the way users start one (``ray start --head``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        check=True, capture_output=True, timeout=180,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=180)


def test_ray_backend_records_the_study_and_resumes_on_a_cluster(tmp_path, ray_head, capsys):
    files = write_tiny_study(tmp_path, pruner="successive_halving")  # ASHA under Ray
    out = tmp_path / "run"
    argv = ["run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet", "--backend", "ray"]

    # Ray started by ccsearch itself on this machine.
    assert main([*argv, "--trials", "3", "--cpus-per-trial", "1"]) == 0
    assert "Pareto front" in capsys.readouterr().out
    study = load(out)
    assert_study_sound(study, trained=3, stopped_lack=("losses",))
    workers = {t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}
    assert workers and all(not w.endswith(f":{os.getpid()}") for w in workers), "trials ran in Ray workers"
    assert (out / "ray").is_dir() and (out / "results.csv").exists()

    # The same study continued on a running cluster: two more candidates, none retrained.
    assert main([*argv, "--trials", "5", "--resume", "--address", ray_head]) == 0
    study = load(out)
    assert_study_sound(study, trained=5, stopped_lack=("losses",))
    for t in study.trials:
        if t.user_attrs.get("reason", "").startswith("ASHA stopped"):
            assert t.state == optuna.trial.TrialState.PRUNED
            assert len(t.user_attrs["curve"]) < 2 and t.user_attrs["status"] in EVALUATED
        if t.user_attrs.get("status") == "ok":
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.values == [t.user_attrs["top1"], t.user_attrs["madds"]]


def test_ray_options_are_checked(study_files, capsys):
    argv = ["run", "--study", str(study_files / "study.yaml"), "--out", str(study_files / "run")]
    assert main([*argv, "--gpus-per-trial", "1"]) == 2
    assert "need --backend ray" in capsys.readouterr().err
    assert main([*argv, "--backend", "ray", "--cpus-per-trial", "-1"]) == 2
    assert "--cpus-per-trial must be > 0, got -1" in capsys.readouterr().err
    assert main([*argv, "--backend", "ray", "--workers", "2"]) == 2
    assert not (study_files / "run").exists()


def test_a_killed_ray_worker_is_retried(tmp_path):
    """SIGKILL the worker process of a training trial: Ray retries it (FailureConfig) and
    the study completes, that trial included, with nothing left RUNNING."""
    files = write_tiny_study(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet",
                 "--backend", "ray", "--trials", "3"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    victim = None
    deadline = time.time() + 180
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if not (out / "study.yaml").exists():  # written once the study's tables and row exist
                continue
            trials = load(out).trials
            for t in trials:
                if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("stage") == "training":
                    victim = t.number, int(t.user_attrs["worker"].rsplit(":", 1)[1])
                    os.kill(victim[1], signal.SIGKILL)
                    break
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no trial was seen training"
    assert proc.returncode == 0, err[-2000:]
    study = load(out)
    assert_study_sound(study, trained=3, stopped_lack=("losses",))
    again = study.trials[victim[0]]
    assert again.user_attrs["worker"] != f"{again.user_attrs['worker'].rsplit(':', 1)[0]}:{victim[1]}", "it ran again"
    assert again.user_attrs["status"] in EVALUATED
