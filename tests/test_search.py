"""The search controller end to end with real Optuna storage, real trainers, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from _postgres import postgres_server
from _study import (
    BUDGET,
    THREE_ARCHITECTURES,
    assert_study_sound,
    cli_argv,
    load,
    records_of,
    stop,
    training,
    wait_for,
    write_tiny_study,
)

from ccsearch.arch import ArchSpec, get_backbone
from ccsearch.cli import main
from ccsearch.errors import UserError
from ccsearch.madds import count_madds
from ccsearch.search import load_search_space, load_study_config
from ccsearch.search import run as search_run
from ccsearch.search.record import Status, TrialState, read, read_all


def test_space_sampling_builds_the_chosen_specs():
    space = load_search_space("mobilenet_v1_placement")
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid()))
    seen = set()

    def objective(trial):
        spec = space.sample(trial, suggest_all=True)
        seen.add(tuple(spec.condconv_groups()))
        assert all(spec.groups[g - 1].experts == 32 for g in spec.condconv_groups())
        assert spec.groups[0].channels == 16  # width 0.25
        return 0.0

    study.optimize(objective)  # the grid sampler stops after its 14 points
    assert seen == {(), *[(g,) for g in range(1, 14)]}


def test_shipped_studies_reproduce_the_papers_experiments():
    for name in ("mnasnet_a1_325m", "mobilenet_v1_routing", "mobilenet_v1_placement",
                 "mobilenet_v1_se_vs_condconv", "resnet50_experts_grid"):
        config = load_study_config(name)
        assert config.space().backbone in ("mnasnet_a1", "mobilenet_v1", "resnet50")
        baseline = config.reference_specs()["baseline"]  # every result is read against it
        assert baseline.to_dict()["groups"] == get_backbone(config.space().backbone).scale_width(
            max(config.space().width)).to_dict()["groups"]
        assert not any(g.experts for g in baseline.groups)
        assert count_madds(baseline).madds <= config.budget
        # The comparisons' effects are a few points: each candidate trains with 3 seeds.
        assert config.repeats == (3 if config.sampler == "grid" else 1)
    assert load_study_config("mnasnet_a1_325m").budget == 325_000_000
    assert load_search_space("mobilenet_v1_routing").grid() == {"routing": ["relu", "tanh", "sigmoid", "softmax"]}
    assert set(load_search_space("mobilenet_v1_se_vs_condconv").grid()) == {"se", "condconv"}


def test_spaces_sample_calibrated_routing_unless_they_reproduce_the_papers_routing(tmp_path):
    def sampled(space):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        return [space.sample(study.ask()) for _ in range(5)]

    headline = load_search_space("mnasnet_a1")
    assert headline.calibrated_routing
    assert all(spec.calibrated_routing for spec in sampled(headline))
    paper = load_search_space("mobilenet_v1_routing")  # the paper's ReLU < tanh < sigmoid
    assert not paper.calibrated_routing
    assert not any(spec.calibrated_routing for spec in sampled(paper))
    # A study's references with CondConv route as its candidates do.
    study = tmp_path / "study.yaml"
    study.write_text("search_space: mnasnet_a1\nbudget: 400M\nreferences:\n"
                     "  tanh: {model: mnasnet_a1, condconv: '5', routing: tanh}\n"
                     "  baseline: mnasnet_a1\n")
    specs = load_study_config(study).reference_specs()
    assert specs["tanh"].calibrated_routing and specs["tanh"].routing_is_calibrated()
    assert not specs["baseline"].routing_is_calibrated()
    study.write_text(study.read_text().replace("mnasnet_a1\nbudget", "mobilenet_v1_routing\nbudget"))
    assert not load_study_config(study).reference_specs()["tanh"].calibrated_routing


@pytest.mark.parametrize(
    "text, message",
    [
        ("backbone: mnasnet_a9\n", "unknown backbone 'mnasnet_a9'"),
        ("backbone: mnasnet_a1\ngroups: [8]\n", "groups [8] do not exist"),
        ("backbone: mnasnet_a1\nexperts: [0, 4]\n", "experts must be a list of integers >= 1"),
        ("backbone: mnasnet_a1\nrouting: [gelu]\n", "routing must be a list"),
        ("backbone: mnasnet_a1\ncalibrated_routing: yes please\n",
         "calibrated_routing must be true or false, got 'yes please'"),
        ("backbone: mnasnet_a1\nplacment: one\n", "unknown field(s) ['placment']"),
        ("groups: all\n", "the field 'backbone' is required"),
        ("backbone: [oops\n", "invalid YAML"),
    ],
)
def test_bad_search_space_names_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="bad.yaml") as err:
        load_search_space(path)
    assert message in str(err.value)


def test_run_optuna_backend_records_everything(study_files, capsys):
    out = study_files / "run"
    code = main(["run", "--study", str(study_files / "study.yaml"), "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Pareto front" in text and "smoke-test proxy, not ImageNet" in text
    assert {p.name for p in out.iterdir()} >= {"study.db", "study.yaml", "results.csv", "pareto.html"}
    study = load(out)
    assert_study_sound(study, trained=3)
    table = pd.read_csv(out / "results.csv")
    assert (table["madds"][table["status"] == "ok"] <= BUDGET).all()

    # The front, checked by brute force against every trained candidate.
    ok = table[table["status"] == "ok"]
    front = {
        int(r.trial) for r in ok.itertuples()
        if not any((o.top1 >= r.top1 and o.madds < r.madds) or (o.top1 > r.top1 and o.madds <= r.madds)
                   for o in ok.itertuples())
    }
    page = (out / "pareto.html").read_text()
    assert "plotly" in page and f"Pareto front ({len(set(ok[ok.trial.isin(front)].digest))})" in page
    assert f"dashboard: {out / 'pareto.html'}" in text
    if front:  # the most accurate front member, as a spec that counts to its recorded MADDs
        records = read_all(study)
        best = max(front, key=lambda n: (records[n].top1, -records[n].madds))
        spec = ArchSpec.load(out / "best_arch.json")
        assert spec.to_dict() == records[best].spec
        assert count_madds(spec).madds == records[best].madds
        assert f"best:      {out / 'best_arch.json'}  (trial {best}," in text
        assert f"retrain it: ccsearch train --from-trial {out} {best})" in text
    assert study.metric_names == ["proxy top-1", "MADDs"], "named for optuna-dashboard"


def test_run_user_errors_leave_nothing_behind(study_files, capsys):
    out = study_files / "never"
    assert main(["run", "--budget", "lots", "--out", str(out)]) == 2
    assert "cannot read MADD count 'lots'" in capsys.readouterr().err
    assert main(["run", "--study", str(study_files / "study.yaml"), "--data", "/no/such", "--out", str(out)]) == 2
    assert "--data '/no/such'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["run", "--study", "nope", "--out", str(out)]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert main(["run", "--study", str(study_files / "study.yaml"), "--resume", "--out", str(out)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    other = f"sqlite:///{study_files / 'other.db'}"
    assert main(["run", "--study", str(study_files / "study.yaml"), "--resume", "--out", str(out),
                 "--storage", other]) == 2
    assert f"no storage at {other!r}" in capsys.readouterr().err
    assert not (study_files / "other.db").exists(), "resume never creates a storage"
    assert main(["results", "--storage", other, "--study", "tiny"]) == 2
    assert not (study_files / "other.db").exists(), "nor does a reader"
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_resume_after_a_stop_finishes_without_retraining(study_files, capsys, sig):
    out = study_files / "run"
    argv = ["run", "--study", str(study_files / "study.yaml"), "--out", str(out), "--quiet", "--trials", "4"]
    proc = subprocess.Popen(cli_argv(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:  # stop it after one trained trial and while another trains: it cannot be ending
        wait_for("a second candidate training", lambda: (
            (records := records_of(out)) and 1 <= sum(r.trained for r in records) <= 2 and training(records)
        ), proc=proc)
    finally:
        _, err = stop(proc, sig)
    if sig == signal.SIGINT:  # the trial in flight is recorded; ccsearch says how to go on
        assert proc.returncode == 130
        assert err.strip().splitlines() == [
            "ccsearch: interrupted (continue it with the same command and --resume)"
        ], "one line, no traceback"
        assert (out / "results.csv").exists() and (out / "pareto.html").exists()
    interrupted = [r.number for r in records_of(out) if r.state in (TrialState.FAIL, TrialState.RUNNING)]
    assert interrupted
    assert main([*argv, "--resume"]) == 0
    assert "retry architectures whose trials were interrupted" in capsys.readouterr().out
    study = load(out)
    assert_study_sound(study, trained=4)
    records = read_all(study)
    for number in interrupted:
        assert records[number].status == Status.INTERRUPTED
    retries = [t for t in study.trials if t.system_attrs.get("retry_of") in interrupted]
    assert len(retries) == len(interrupted), "each interrupted architecture retried once"
    for t in retries:
        assert t.params == study.trials[t.system_attrs["retry_of"]].params


def test_resume_refuses_a_changed_configuration(study_files, capsys):
    out = study_files / "run"
    argv = ["run", "--study", str(study_files / "study.yaml"), "--out", str(out), "--quiet", "--trials", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    for change, field in (
        (["--proxy", "smoke"], "proxy"),
        (["--seed", "5"], "seed"),
    ):
        assert main([*argv, "--resume", *change]) == 2, change
        err = capsys.readouterr().err
        assert err.startswith("ccsearch: error: --resume cannot change the study:") and field in err
    study_yaml = study_files / "study.yaml"
    study_yaml.write_text(study_yaml.read_text().replace("budget: 42M", "budget: 41.9M"))
    assert main([*argv, "--resume"]) == 2
    assert "budget: the study has 42M (42,000,000), this run asks for 41.9M" in capsys.readouterr().err
    study_yaml.write_text(study_yaml.read_text().replace("budget: 41.9M", "budget: 42M"))
    (study_files / "space.yaml").write_text(
        (study_files / "space.yaml").read_text().replace("[2, 4, 32]", "[2, 4]"))
    assert main([*argv, "--resume"]) == 2
    assert "search space" in capsys.readouterr().err
    (study_files / "space.yaml").write_text(
        (study_files / "space.yaml").read_text().replace("[2, 4]", "[2, 4, 32]"))
    before = len(load(out).trials)
    assert main([*argv, "--resume", "--trials", "2"]) == 0, "a larger --trials is the one change allowed"
    assert sum(r.trained for r in read_all(load(out))) == 2 and len(load(out).trials) > before


def test_joining_processes_get_distinct_sampler_seeds(study_files):
    config = load_study_config(study_files / "study.yaml")
    search_run.create(config, study_files / "run")
    url = search_run.default_storage(study_files / "run")
    seeds = {search_run.join(url, "tiny").sampler_seed for _ in range(20)}
    assert len(seeds) == 20, "process ids repeat across containers; these must not"


def test_a_worker_keeps_its_trial_while_the_run_is_resumed(tmp_path):
    """``ccsearch run`` and ``ccsearch worker`` on one study; the run is killed and resumed
    while the worker trains: the resume leaves the worker's trial alone (its process is
    alive), the worker's trial finishes and is kept, and the killed one is retried."""
    files = write_tiny_study(tmp_path, trials=3)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_argv = cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet")
    run = subprocess.Popen(run_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    worker = None
    try:
        wait_for("the run's first trial training", lambda: training(records_of(out)), proc=run)
        # Paused mid-training (its heartbeat within the grace period), so the worker's trial
        # trains beside it however slowly the worker starts.
        os.kill(run.pid, signal.SIGSTOP)
        worker = subprocess.Popen(
            cli_argv("worker", "--study", "tiny", "--quiet"), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={**env, "CCSEARCH_STORAGE": search_run.default_storage(out)})

        def both_training():
            now = training(records_of(out))
            by = {p.pid: [r for r in now if r.owner.endswith(f":{p.pid}")] for p in (run, worker)}
            if by[run.pid] and by[worker.pid]:
                os.kill(worker.pid, signal.SIGSTOP)  # alive but paused: its trial must survive
                run.kill()
                return by[worker.pid][0], [r.number for r in by[run.pid]]
            return None

        mine, killed = wait_for("the run and the worker training at once", both_training, proc=worker)
        run.wait()
        resumed = subprocess.Popen([*run_argv, "--resume"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        wait_for("the resumed run's own trial", lambda: [
            r for r in records_of(out) if r.owner.endswith(f":{resumed.pid}")
        ], proc=resumed)
        assert read(load(out).trials[mine.number]).running, "the live worker's trial was kept"
        os.kill(worker.pid, signal.SIGCONT)
        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr[-2000:]
        assert worker.wait(timeout=300) == 0
    finally:
        for p in (run, worker):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    study = load(out)
    assert_study_sound(study, trained=3)
    records = read_all(study)
    assert records[mine.number].status in (Status.OK, Status.DIVERGED)
    assert records[mine.number].state == TrialState.COMPLETE
    assert killed and all(records[n].status == Status.INTERRUPTED for n in killed)


@pytest.mark.parametrize("seed", [1, 2])
def test_four_workers_train_exactly_the_wanted_candidates(tmp_path, seed):
    """The stress test: 4 worker processes, 3 distinct architectures, ``trials: 3``."""
    files = write_tiny_study(tmp_path, trials=3, space=THREE_ARCHITECTURES, budget="44M")
    (files / "proxy.yaml").write_text((files / "proxy.yaml").read_text().replace("epochs: 2", "epochs: 1"))
    out = tmp_path / "run"
    result = subprocess.run(
        cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet",
                 "--workers", "4", "--seed", str(seed)),
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    study = load(out)
    assert_study_sound(study, trained=3, budget=44_000_000)
    workers = {r.owner for r in read_all(study) if r.owner}
    assert len(workers) >= 2, "several worker processes evaluated trials"


def test_yaml_folders_ship_inside_the_wheel(tmp_path):
    """After a plain pip install the shipped spaces and studies must still be found."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(root), "-w", str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    import zipfile

    (wheel,) = tmp_path.glob("ccsearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("search_spaces", "studies"):
        shipped = {p.name for p in (root / kind).glob("*.yaml")}
        assert shipped and {f"ccsearch/_configs/{kind}/{n}" for n in shipped} <= names


def test_two_workers_share_one_postgresql_study(study_files):
    with postgres_server() as url:
        out = study_files / "run"
        result = subprocess.run(
            cli_argv("run", "--study", str(study_files / "study.yaml"), "--out", str(out), "--quiet",
                     "--storage", url.replace("postgresql://", "postgres://"), "--workers", "2",
                     "--trials", "4"),
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert not (out / "study.db").exists(), "nothing written to SQLite"
        study = optuna.load_study(study_name="tiny", storage=url.replace("postgresql://", "postgresql+psycopg://"))
        assert_study_sound(study, trained=4)
        workers = {r.owner for r in read_all(study) if r.owner}
        assert len(workers) == 2, "both worker processes evaluated trials"
        assert pd.read_csv(out / "results.csv")["trial"].tolist() == [t.number for t in study.trials]


def test_storage_passwords_are_never_shown(study_files, capsys):
    url = "postgresql://ann:s3cret@127.0.0.1:9/nas?password=s3cret"  # nothing listens on port 9
    argv = ["run", "--study", str(study_files / "study.yaml"), "--out", str(study_files / "run"), "--storage", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot open storage 'postgresql://ann:***@127.0.0.1:9/nas?password=***'" in err
    assert "s3cret" not in err
    assert not (study_files / "run").exists()
