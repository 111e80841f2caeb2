"""The search controller end to end with real Optuna storage, real trainers, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from _postgres import postgres_server
from _study import BUDGET, assert_study_sound, cli_argv, load

from ccsearch.arch import ArchSpec
from ccsearch.cli import main
from ccsearch.errors import UserError
from ccsearch.madds import count_madds
from ccsearch.search import load_search_space, load_study_config
from ccsearch.search.objective import EVALUATED


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
    assert load_study_config("mnasnet_a1_325m").budget == 325_000_000
    assert load_search_space("mobilenet_v1_routing").grid() == {"routing": ["relu", "tanh", "sigmoid", "softmax"]}
    assert set(load_search_space("mobilenet_v1_se_vs_condconv").grid()) == {"se", "condconv"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("backbone: mnasnet_a9\n", "unknown backbone 'mnasnet_a9'"),
        ("backbone: mnasnet_a1\ngroups: [8]\n", "groups [8] do not exist"),
        ("backbone: mnasnet_a1\nexperts: [0, 4]\n", "experts must be a list of integers >= 1"),
        ("backbone: mnasnet_a1\nrouting: [gelu]\n", "routing must be a list"),
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
        best = max(front, key=lambda n: (study.trials[n].user_attrs["top1"], -study.trials[n].user_attrs["madds"]))
        spec = ArchSpec.load(out / "best_arch.json")
        assert spec.to_dict() == study.trials[best].user_attrs["spec"]
        assert count_madds(spec).madds == study.trials[best].user_attrs["madds"]
        assert f"best:      {out / 'best_arch.json'}  (trial {best}," in text


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
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_resume_after_a_stop_finishes_without_retraining(study_files, capsys, sig):
    out = study_files / "run"
    argv = ["run", "--study", str(study_files / "study.yaml"), "--out", str(out), "--quiet", "--trials", "4"]
    proc = subprocess.Popen(cli_argv(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # stop it in the middle of training a candidate
            time.sleep(0.3)
            if (out / "study.yaml").exists():  # written once the study's tables and row exist
                study = load(out)
                # after one evaluated trial and before the third: the run cannot be finishing
                evaluated = len([u for u in study.trials if u.user_attrs.get("status") in EVALUATED])
                if 1 <= evaluated <= 2 and any(
                    t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("stage") == "training"
                    for t in study.trials
                ):
                    break
        else:
            pytest.fail("the run never reached a second training trial")
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    states = optuna.trial.TrialState
    if sig == signal.SIGINT:  # Optuna fails the trial in flight; ccsearch says how to go on
        assert proc.returncode == 130
        assert err.strip().endswith("ccsearch: interrupted (continue it with the same command and --resume)")
    # FAIL after Ctrl-C in the trial function; RUNNING after SIGKILL (or Ctrl-C between trials)
    interrupted = [t.number for t in load(out).trials if t.state in (states.FAIL, states.RUNNING)]
    assert interrupted
    assert main([*argv, "--resume"]) == 0
    assert "were interrupted" in capsys.readouterr().out
    study = load(out)
    assert_study_sound(study, trained=4)
    for number in interrupted:
        assert study.trials[number].user_attrs["status"] == "interrupted"
    retries = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert retries, "the interrupted architecture was retried"


def test_two_local_workers_share_one_sqlite_study(study_files):
    out = study_files / "run"
    result = subprocess.run(
        cli_argv("run", "--study", str(study_files / "study.yaml"), "--out", str(out), "--quiet", "--workers", "2", "--trials", "4"),
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    study = load(out)
    assert_study_sound(study, trained=4)
    workers = {t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}
    assert len(workers) == 2, "both worker processes evaluated trials"


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
                     "--storage", url, "--workers", "2", "--trials", "4"),
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert not (out / "study.db").exists(), "nothing written to SQLite"
        study = optuna.load_study(study_name="tiny", storage=url)
        assert_study_sound(study, trained=4)
        workers = {t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}
        assert len(workers) == 2, "both worker processes evaluated trials"
        assert pd.read_csv(out / "results.csv")["trial"].tolist() == [t.number for t in study.trials]


def test_storage_passwords_are_never_shown(study_files, capsys):
    from ccsearch.search.storage import shown_url

    assert shown_url("postgresql://ann:s3cret@db.lab:5432/nas") == "postgresql://ann:***@db.lab:5432/nas"
    assert shown_url("sqlite:///runs/x/study.db") == "sqlite:///runs/x/study.db"
    url = "postgresql://ann:s3cret@127.0.0.1:9/nas"  # nothing listens on port 9
    argv = ["run", "--study", str(study_files / "study.yaml"), "--out", str(study_files / "run"), "--storage", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot open storage 'postgresql://ann:***@127.0.0.1:9/nas'" in err and "s3cret" not in err
    assert not (study_files / "run").exists()
