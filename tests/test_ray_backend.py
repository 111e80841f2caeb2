"""``ccsearch run --backend ray``: a real Ray, real trials; the driver alone writes the study.

Ray's worker processes here cannot reach any storage: a ``sitecustomize`` on their
``PYTHONPATH`` makes SQLite and Optuna's storages raise inside them (as on a worker node
without the run folder), and leaves a marker file to show it ran.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _study import (
    THREE_ARCHITECTURES,
    assert_study_sound,
    cli_argv,
    load,
    records_of,
    stop,
    wait_for,
    write_tiny_study,
)

from ccsearch.cli import main
from ccsearch.search.record import Status, TrialState, read_all

RAY = str(Path(sys.executable).with_name("ray"))
POISON = '''
import os, sys
if any(a.endswith("default_worker.py") for a in sys.argv):  # a Ray worker process
    def unreachable(*args, **kwargs):
        raise ConnectionRefusedError("the study's storage is not reachable from Ray workers")
    import sqlite3
    sqlite3.connect = unreachable
    import optuna.storages
    optuna.storages.RDBStorage.__init__ = unreachable
    optuna.storages.JournalStorage.__init__ = unreachable
    open(os.path.join(os.path.dirname(__file__), f"poisoned-{os.getpid()}"), "w").close()
'''


@pytest.fixture
def no_storage_in_workers(tmp_path):
    """An environment whose Ray workers cannot open any storage; the marker folder."""
    folder = tmp_path / "poison"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(POISON)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}, folder


def _poisoned(folder: Path) -> int:
    return len(list(folder.glob("poisoned-*")))


@pytest.fixture
def ray_head(no_storage_in_workers):
    """A one-machine Ray cluster started the way users start one (``ray start --head``),
    whose workers cannot reach the storage (like another node's)."""
    env, _ = no_storage_in_workers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        check=True, capture_output=True, timeout=180, env=env,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=180)


def _run(argv: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cli_argv(*argv), capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_ray_backend_records_the_study_and_resumes_on_a_cluster(tmp_path, ray_head, no_storage_in_workers):
    env, poison = no_storage_in_workers
    files = write_tiny_study(tmp_path, pruner="successive_halving")  # ASHA under Ray
    out = tmp_path / "run"
    argv = ["run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet", "--backend", "ray"]

    # Ray started by ccsearch itself on this machine.
    started = _run([*argv, "--trials", "3", "--cpus-per-trial", "1"], env)
    assert "Pareto front" in started.stdout
    assert "Token authentication" not in started.stderr, "--quiet: no notice of Ray's own"
    study = load(out)
    assert_study_sound(study, trained=3)
    records = read_all(study)
    assert all(r.worker != r.owner for r in records if r.trained), "trained in Ray workers"
    assert (out / "ray").is_dir() and (out / "results.csv").exists()

    # The same study continued on a running cluster: two more candidates, none retrained.
    _run([*argv, "--trials", "5", "--resume", "--address", ray_head], env)
    study = load(out)
    assert_study_sound(study, trained=5)
    for r in read_all(study):
        if r.reason.startswith("ASHA stopped"):
            assert r.state == TrialState.PRUNED and r.status == Status.PRUNED and len(r.curve) < 2
        if r.status == Status.OK:
            assert r.state == TrialState.COMPLETE
    assert _poisoned(poison) >= 1, "the Ray workers could reach no storage"


@pytest.mark.parametrize("seed", [1, 2])
def test_ray_trains_exactly_the_wanted_candidates_four_at_a_time(tmp_path, no_storage_in_workers, seed):
    """The stress test under Ray: 4 trials at once, 3 distinct architectures, ``trials: 3``."""
    env, poison = no_storage_in_workers
    files = write_tiny_study(tmp_path, trials=3, space=THREE_ARCHITECTURES, budget="44M")
    (files / "proxy.yaml").write_text((files / "proxy.yaml").read_text().replace("epochs: 2", "epochs: 1"))
    out = tmp_path / "run"
    _run(["run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet", "--backend", "ray",
          "--cpus-per-trial", "0.5", "--seed", str(seed)], env)
    assert_study_sound(load(out), trained=3, budget=44_000_000)
    assert _poisoned(poison) >= 1


def test_ray_options_are_checked(study_files, capsys):
    argv = ["run", "--study", str(study_files / "study.yaml"), "--out", str(study_files / "run")]
    assert main([*argv, "--gpus-per-trial", "1"]) == 2
    assert "need --backend ray" in capsys.readouterr().err
    assert main([*argv, "--backend", "ray", "--cpus-per-trial", "-1"]) == 2
    assert "--cpus-per-trial must be > 0, got -1" in capsys.readouterr().err
    assert main([*argv, "--backend", "ray", "--gpus-per-trial", "2"]) == 2
    assert "--gpus-per-trial must be between 0 and 1" in capsys.readouterr().err
    assert main([*argv, "--backend", "ray", "--workers", "2"]) == 2
    assert not (study_files / "run").exists()


def _training(records: list) -> list:
    """The records of trials that Ray workers train, past their first epoch."""
    return [r for r in records if r.holds_slot and r.curve and r.worker != r.owner]


def _listening_sockets() -> list[tuple[str, int, str]]:
    """Every listening TCP socket now, as (address, port, owner's command line), read from
    /proc as ``ss -ltnp`` does."""
    owners = {}
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            pid = fd.parent.parent
            with contextlib.suppress(OSError):
                owners[target[8:-1]] = (pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].rsplit(":", 1)
            raw = bytes.fromhex(address)
            words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian words
            ip = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words))
            found.append((ip, int(port, 16), owners.get(fields[9], "")))
    return found


def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback


def test_a_killed_ray_worker_is_retried(tmp_path):
    """SIGKILL the worker process of a training trial: Ray retries it (FailureConfig) and
    the study completes, that trial included, with nothing left RUNNING."""
    files = write_tiny_study(tmp_path)
    (files / "proxy.yaml").write_text((files / "proxy.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet",
                 "--backend", "ray", "--trials", "3"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        victim = wait_for("a trial past its first epoch", lambda: _training(records_of(out)), proc=proc)[0]
        # While Ray trains: its dashboard and job API (no authentication) are off.
        sockets = [(ip, port, cmd) for ip, port, cmd in _listening_sockets() if "ray" in cmd]
        assert any("gcs_server" in cmd for _, _, cmd in sockets), "Ray's sockets were seen"
        programs = [" ".join(cmd.split()[:2]) for _, _, cmd in sockets]  # not their flags
        assert not [p for p in programs if "dashboard" in p], programs
        assert not [port for _, port, _ in sockets if port in (8265, 52365)], sockets
        # ... and every socket of the Ray that ccsearch started listens on loopback only.
        exposed = [(ip, port, cmd[:80]) for ip, port, cmd in sockets if not _is_loopback(ip)]
        assert not exposed, exposed
        os.kill(int(victim.worker.rsplit(":", 1)[1]), signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    study = load(out)
    assert_study_sound(study, trained=3)
    again = read_all(study)[victim.number]
    assert again.worker != victim.worker and again.trained, "it ran again in another worker"


def test_ctrl_c_under_ray_exits_130_and_resumes(tmp_path, capsys):
    files = write_tiny_study(tmp_path)
    # 5 epochs, not 2: Ctrl-C must reach a run still training.  With 2, about a second of
    # training was left once a trial's first epoch was recorded, and a fresh clone's suite on
    # a 2-core machine once signalled a run that had ended (exit 0).
    (files / "proxy.yaml").write_text((files / "proxy.yaml").read_text().replace("epochs: 2", "epochs: 5"))
    out = tmp_path / "run"
    argv = ["run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet", "--backend", "ray",
            "--trials", "3"]
    proc = subprocess.Popen(cli_argv(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:  # a trial past its first epoch while none has finished: 4 epochs and a trial remain
        wait_for("a trial past its first epoch, none finished", lambda: (
            (records := records_of(out)) and _training(records) and not any(r.trained for r in records)
        ), proc=proc)
    finally:
        _, err = stop(proc, timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "ccsearch: interrupted (continue it with the same command and --resume)"
    )
    records = read_all(load(out))
    assert not [r for r in records if r.state == TrialState.RUNNING], "the trial in flight is recorded"
    assert [r for r in records if r.status == Status.INTERRUPTED]
    # Resumed with the Optuna backend: both backends keep the same records.
    assert main([*argv[:-4], "--trials", "3", "--resume"]) == 0
    assert_study_sound(load(out), trained=3)


def test_an_error_inside_a_ray_trial_reaches_the_driver_with_its_message(tmp_path):
    """Ray would retry a raising trial and, with its log off, hide why: the trial reports
    the error as a failed result instead, which the driver records with its reason."""
    import json

    import ray
    from ray import tune

    from ccsearch.data import load_data
    from ccsearch.search.backends.ray_tune import ray_trial
    from ccsearch.train import get_proxy

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_parameters(ray_trial, proxy_data=load_data("digits", resolution=32),
                                         proxy=get_proxy("smoke-digits", epochs=1), device="cpu",
                                         threads=1)
        tuner = tune.Tuner(trainable, param_space={"spec": {"name": "broken"}, "seeds": [0],
                                                   "trial": 0},
                           run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
        (result,) = tuner.fit()
    finally:
        ray.shutdown()
    assert result.error is None  # nothing for Ray to retry
    train_result = json.loads(result.metrics["train_result"])
    assert train_result["status"] == "failed"
    assert train_result["reason"] == "UserError: ArchSpec: the fields 'name' and 'groups' are required"
