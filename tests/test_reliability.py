"""Faults a long search meets, injected for real: the study stays sound and keeps every
finished trial."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from _postgres import postgres_server
from _study import assert_study_sound, cli_argv, load, write_tiny_study

from ccsearch.arch import spec_digest
from ccsearch.cli import main


def test_two_runs_started_on_one_folder_at_once_leave_one_sound_study(tmp_path):
    """Whatever the interleaving, one run creates the study and trains it; the other is
    refused with one line (exit 2) and touches nothing of it."""
    files = write_tiny_study(tmp_path, trials=1)
    out = tmp_path / "run"
    argv = cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet")
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    ended = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in ended) == [0, 2], ended
    (refused,) = [err for code, _, err in ended if code == 2]
    assert ("already holds a study" in refused or "another ccsearch run is creating" in refused)
    assert "Traceback" not in refused
    assert len(refused.strip().splitlines()) == 1
    assert_study_sound(load(out), trained=1, budget=42_000_000)
    assert (out / "study.yaml").read_text().strip()  # the winner's, whole


KILLED_BEFORE_TELL = '''
import os, signal, sys
from pathlib import Path
from ccsearch.search import load_study_config, record as rec, run as search_run
from ccsearch.search.backends.local import InProcess
from ccsearch.search.record import Status
from ccsearch.train import TrainResult

def trainer(spec, seed, on_epoch):
    on_epoch(1, 55.0)
    return TrainResult(status="ok", top1=55.0, curve=[55.0], epochs=1, device="cpu",
                       wall_time=0.01)

real_tell = rec.tell
def tell(study, trial, record, values=None):
    if record.status == Status.OK:  # the record says ok; Optuna has not been told
        os.kill(os.getpid(), signal.SIGKILL)
    real_tell(study, trial, record, values)
rec.tell = tell
search = search_run.create(load_study_config(sys.argv[1]), Path(sys.argv[2]))
InProcess(trainer=trainer).run(search)
'''


def test_a_kill_between_a_trials_last_record_and_its_tell_keeps_its_result_once(tmp_path):
    """The process dies after recording "ok" and before telling Optuna: the result is kept
    (as a finished copy), the dead trial reads as interrupted, and its architecture is
    not trained again."""
    import signal
    import sys

    from ccsearch.search import load_study_config
    from ccsearch.search import run as search_run
    from ccsearch.search.backends.local import InProcess
    from ccsearch.search.record import Status, TrialState, read_all
    from ccsearch.train import TrainResult

    files = write_tiny_study(tmp_path, trials=2)
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLED_BEFORE_TELL, str(files / "study.yaml"),
                            str(out)], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    (killed,) = [r for r in read_all(load(out)) if r.state == TrialState.RUNNING]
    assert killed.status == Status.OK  # recorded, never told

    trained = []

    def trainer(spec, seed, on_epoch):
        trained.append(spec)
        on_epoch(1, 60.0)
        return TrainResult(status="ok", top1=60.0, curve=[60.0], epochs=1, device="cpu",
                           wall_time=0.01)

    search, _ = search_run.resume(load_study_config(files / "study.yaml"), out)
    InProcess(trainer=trainer).run(search)
    records = read_all(load(out))
    dead = records[killed.number]
    assert dead.status == Status.INTERRUPTED and "kept as a finished copy" in dead.reason
    (copy,) = [r for r in records if r.digest == killed.digest and r.trained]
    assert copy.status == Status.OK and copy.top1 == 55.0
    assert killed.digest not in {spec_digest(s) for s in trained}, "trained again"
    assert len(trained) == 1  # the study's second candidate only
    assert_study_sound(load(out), trained=2, budget=42_000_000)


KILLED_IN_COUNT = '''
import os, signal, sys
from pathlib import Path
from ccsearch.search import load_study_config, objective, run as search_run
from ccsearch.search.backends.local import InProcess

def count_madds(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # inside the first MADD count

objective.count_madds = count_madds
search = search_run.create(load_study_config(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
InProcess(trainer=lambda spec, seed, on_epoch: None).run(search)
'''


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_kill_inside_the_madd_count_is_retried_once(tmp_path, kind):
    """Killed while counting its first candidate: the record written before the count (on
    SQLite in the transaction of the sampled parameters) names its dead owner, so the next
    process fails the trial at once, without waiting for its heartbeat to go stale, and
    retries its architecture once."""
    import signal
    import sys

    import optuna

    from ccsearch.search import load_study_config
    from ccsearch.search import run as search_run
    from ccsearch.search.backends.local import InProcess
    from ccsearch.search.record import Status, TrialState, read_all
    from ccsearch.search.storage import open_storage
    from ccsearch.train import TrainResult

    files = write_tiny_study(tmp_path, trials=2)
    out = tmp_path / "run"
    storage = (f"journal:{tmp_path / 'journal.log'}" if kind == "journal"
               else f"sqlite:///{tmp_path / 'study.db'}")
    child = subprocess.run([sys.executable, "-c", KILLED_IN_COUNT, str(files / "study.yaml"),
                            str(out), storage], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    stored = optuna.load_study(study_name="tiny", storage=open_storage(storage))
    (killed,) = [r for r in read_all(stored) if r.state == TrialState.RUNNING]
    assert killed.owner and killed.status is None  # who held it, and nothing more
    search, _ = search_run.resume(load_study_config(files / "study.yaml"), out, storage)

    def trainer(spec, seed, on_epoch):
        on_epoch(1, 60.0)
        return TrainResult(status="ok", top1=60.0, curve=[60.0], epochs=1, device="cpu",
                           wall_time=0.01)

    InProcess(trainer=trainer).run(search)
    records = read_all(search.study)
    assert records[killed.number].status == Status.INTERRUPTED
    (retry,) = [t for t in search.study.trials if t.system_attrs.get("retry_of") == killed.number]
    assert records[retry.number].trained and retry.params == search.study.trials[killed.number].params
    assert_study_sound(search.study, trained=2, budget=42_000_000)


KILLED_IN_WRITE = '''
import os, signal, sys
from pathlib import Path
import sqlalchemy.orm
from ccsearch.search import load_study_config, record as rec, run as search_run
from ccsearch.search.backends.local import InProcess
from ccsearch.train import TrainResult

def trainer(spec, seed, on_epoch):
    on_epoch(1, 55.0)
    return TrainResult(status="ok", top1=55.0, curve=[55.0], epochs=1, device="cpu",
                       wall_time=0.01)

inside = []
real_commit = sqlalchemy.orm.Session.commit
def commit(session):
    if inside:  # the record's SQL is sent; the transaction is open, not committed
        session.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_commit(session)
sqlalchemy.orm.Session.commit = commit

real_write = rec.write
def write(trial, record):
    inside.append(record.epochs == 1)  # the record after the first epoch
    inside[:] = [x for x in inside if x]
    real_write(trial, record)
rec.write = write
search = search_run.create(load_study_config(sys.argv[1]), Path(sys.argv[2]))
InProcess(trainer=trainer).run(search)
'''


def test_a_kill_inside_a_storage_write_loses_only_that_write(tmp_path):
    """SIGKILL inside the transaction that records a trial's first epoch (its SQL sent,
    not committed): SQLite rolls the write back, the trial keeps its last committed record,
    ``--resume`` fails it as interrupted and trains its architecture again once."""
    import signal
    import sqlite3
    import sys

    from ccsearch.search import load_study_config
    from ccsearch.search import run as search_run
    from ccsearch.search.backends.local import InProcess
    from ccsearch.search.record import Stage, Status, TrialState, read_all
    from ccsearch.train import TrainResult

    files = write_tiny_study(tmp_path, trials=2)
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLED_IN_WRITE, str(files / "study.yaml"),
                            str(out)], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    with contextlib.closing(sqlite3.connect(out / "study.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (killed,) = [r for r in read_all(load(out)) if r.state == TrialState.RUNNING]
    assert killed.stage == Stage.TRAINING and not killed.curve, "the epoch's write is gone"

    trained = []

    def trainer(spec, seed, on_epoch):
        trained.append(spec_digest(spec))
        on_epoch(1, 60.0)
        return TrainResult(status="ok", top1=60.0, curve=[60.0], epochs=1, device="cpu",
                           wall_time=0.01)

    search, _ = search_run.resume(load_study_config(files / "study.yaml"), out)
    InProcess(trainer=trainer).run(search)
    records = read_all(search.study)
    assert records[killed.number].status == Status.INTERRUPTED
    (retry,) = [t for t in search.study.trials if t.system_attrs.get("retry_of") == killed.number]
    assert records[retry.number].trained and trained.count(killed.digest) == 1
    assert_study_sound(search.study, trained=2, budget=42_000_000)


@pytest.fixture
def full_disk(tmp_path):
    """A real file system of 64 MiB (tmpfs) and a function that fills it to the last byte.

    64 MiB holds a dashboard page and an export whichever trial is best (16 MiB did not).
    """
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")

    def fill() -> None:
        with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
            for size in (1 << 20, 4096, 1):  # to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)

    try:
        yield folder, fill
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "No space left on device" in err
    return err


def _snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "filler"}


def test_a_full_disk_leaves_the_previous_results_dashboard_and_export_whole(
        tiny_runs, full_disk, capsys):
    disk, fill = full_disk
    run = str(tiny_runs[0])
    assert main(["results", run, "--format", "csv", "-o", str(disk / "results.csv")]) == 0
    assert main(["dashboard", run, "-o", str(disk / "page.html")]) == 0
    assert main(["export", run, "--trial", "best", "-o", str(disk / "best")]) == 0
    before = _snapshot(disk)
    capsys.readouterr()
    fill()
    err = _one_line_error(capsys, main(["results", run, "--format", "csv",
                                        "-o", str(disk / "results.csv")]))
    assert str(disk / "results.csv") in err
    err = _one_line_error(capsys, main(["dashboard", run, "-o", str(disk / "page.html")]))
    assert str(disk / "page.html") in err
    _one_line_error(capsys, main(["export", run, "--trial", "best", "-o", str(disk / "best"),
                                  "--force"]))
    assert _snapshot(disk) == before  # every previous file whole, no temporary left
    # Room for the weights but not the model archive: the disk fills inside model.pt2,
    # where torch's own archive writer used to abort the whole process.
    filler = disk / "filler"
    room = (disk / "best" / "model.safetensors").stat().st_size + (64 << 10)
    os.truncate(filler, filler.stat().st_size - room)
    _one_line_error(capsys, main(["export", run, "--trial", "best", "-o", str(disk / "best"),
                                  "--force"]))
    assert _snapshot(disk) == before


def _argv_of_every_process() -> list[str]:
    """What ``ps`` shows of every process now: their command lines."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def test_a_storage_password_is_in_no_file_output_study_or_process_list(tmp_path):
    """A PostgreSQL run with the password in both URL forms (``user:pw@`` and
    ``?password=``), then its results, dashboard and export: the password is in no file
    any of them wrote, no output line, no study attribute and no process's command line."""
    secret = "Pw7xQz3k9"  # the test server trusts every login, so any password connects
    files = write_tiny_study(tmp_path, trials=2)
    out, written = tmp_path / "run", tmp_path / "outputs"
    written.mkdir()
    with postgres_server() as url:
        in_userinfo = url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
        in_query = url.replace("postgresql://", "postgresql+psycopg://") + f"?password={secret}"
        # The URL by environment, as the README says: a --storage argument is in the
        # process list for anyone to read, whatever ccsearch does.
        run = subprocess.Popen(
            cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet",
                     "--workers", "2"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "CCSEARCH_STORAGE": in_userinfo})
        seen: list[str] = []
        while run.poll() is None:  # the run and its two workers, scanned while they live
            seen += [line for line in _argv_of_every_process() if "ccsearch" in line]
            time.sleep(0.05)  # a scan's pace, not a wait for a state
        outputs = [*run.communicate(), *seen]
        assert run.returncode == 0, outputs[1][-2000:]
        assert any(" worker" in line for line in seen), "the workers' command lines were seen"
        store = ["--study", "tiny"]  # the storage from CCSEARCH_STORAGE
        for argv in (["results", *store, "--format", "csv", "-o", str(written / "results.csv")],
                     ["dashboard", *store, "-o", str(written / "dashboard.html")],
                     ["export", str(out), *store, "-o", str(written / "export")],
                     ["results", *store]):
            done = subprocess.run(cli_argv(*argv), capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "CCSEARCH_STORAGE": in_query})
            assert done.returncode == 0, (argv, done.stderr[-2000:])
            outputs += [done.stdout, done.stderr]
        study = optuna.load_study(study_name="tiny", storage=in_query)
        assert_study_sound(study, trained=2)
        attributes = json.dumps([study.user_attrs, [t.user_attrs for t in study.trials]])
    files_written = [p for p in [*out.rglob("*"), *written.rglob("*")] if p.is_file()]
    assert {"study.yaml", "results.csv"} <= {p.name for p in files_written}
    assert {"dashboard.html", "model.pt2", "arch.json"} <= {p.name for p in files_written}
    for path in files_written:
        assert secret.encode() not in path.read_bytes(), path
    for text in [*outputs, attributes]:
        assert secret not in text
    assert "***" in (out / "study.yaml").read_text()  # the URL is there, masked


def test_one_of_two_workers_killed_mid_trial_the_other_finishes_the_study(tmp_path):
    """SIGKILL one of the two ``ccsearch worker`` processes of ``run --workers 2`` while it
    trains: the other sees its owner dead on this machine, fails the trial, trains its
    architecture again once, and finishes the study; the run says which worker died."""
    import signal

    from _study import training, wait_for

    from ccsearch.search.record import Status, read_all

    files = write_tiny_study(tmp_path, trials=3)
    (files / "proxy.yaml").write_text(
        (files / "proxy.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    out = tmp_path / "run"
    run = subprocess.Popen(
        cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet",
                 "--workers", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        def a_trial_past_its_first_epoch():
            if not (out / "study.yaml").exists():
                return None
            return [r for r in training(read_all(load(out))) if r.curve and r.reference == ""]

        victim = wait_for("a worker's trial past its first epoch", a_trial_past_its_first_epoch,
                          proc=run)[0]
        os.kill(int(victim.owner.rsplit(":", 1)[1]), signal.SIGKILL)
        _, err = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-2000:]
    assert f"killed by signal {signal.SIGKILL}" in err and "the study is complete" in err, err
    study = load(out)
    assert_study_sound(study, trained=3)
    records = read_all(study)
    assert records[victim.number].status in (Status.FAILED, Status.INTERRUPTED)
    retries = [t for t in study.trials if t.system_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1, "its architecture is tried again, once"
    assert records[retries[0].number].digest == victim.digest
    assert sum(r.trained and r.digest == victim.digest for r in records) == 1


def test_a_postgresql_restart_under_two_workers_loses_at_most_the_trials_in_flight(tmp_path):
    """The server restarts (every connection cut) while both workers train: each storage
    call then retries or fails only its trial, and the study completes."""
    from _postgres import postgres_instance
    from _study import training, wait_for

    from ccsearch.search.record import Status, read_all

    files = write_tiny_study(tmp_path, trials=3)
    (files / "proxy.yaml").write_text(
        (files / "proxy.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    out = tmp_path / "run"
    with postgres_instance() as server:
        reader = server.url.replace("postgresql://", "postgresql+psycopg://")

        def in_flight():
            try:
                records = read_all(optuna.load_study(study_name="tiny", storage=reader))
            except KeyError:  # no study yet
                return None
            return [r.number for r in training(records) if r.curve]

        run = subprocess.Popen(
            cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet",
                     "--workers", "2"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "CCSEARCH_STORAGE": server.url})
        try:
            training_then = wait_for("a trial past its first epoch", in_flight, proc=run)
            server.restart()
            _, err = run.communicate(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, err[-3000:]
        study = optuna.load_study(study_name="tiny", storage=reader)
        assert_study_sound(study, trained=3)
        lost = [r for r in read_all(study) if r.status == Status.FAILED]
        assert len(lost) <= 2, [(r.number, r.reason) for r in lost]  # two workers: two in flight
        assert all(r.number in training_then or r.epochs == 0 for r in lost), training_then
