"""Storage URLs: opening each kind, and masking passwords wherever a URL is shown."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalStorage

from ccsearch.errors import UserError
from ccsearch.search.storage import HEARTBEAT, open_storage, shown_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ann:s3cret@host/db", "postgresql://ann:***@host/db"),
        ("postgres://ann:s3cret@host:5432/db", "postgres://ann:***@host:5432/db"),
        ("postgresql+psycopg://ann:s3cret@host/db", "postgresql+psycopg://ann:***@host/db"),
        ("mysql://ann:s3cret@host/db", "mysql://ann:***@host/db"),
        ("mysql+pymysql://ann:s3%40cret@host/db", "mysql+pymysql://ann:***@host/db"),
        (
            "postgresql://host/db?user=ann&password=s3cret",
            "postgresql://host/db?user=ann&password=***",
        ),
        (
            "postgres://host/db?PassWord=a&sslmode=require&pwd=b;Passwd=c",
            "postgres://host/db?PassWord=***&sslmode=require&pwd=***;Passwd=***",
        ),
        (
            "postgresql+psycopg://ann:s3cret@host/db?password=other&user=ann",
            "postgresql+psycopg://ann:***@host/db?password=***&user=ann",
        ),
        ("postgresql://ann@host/db", "postgresql://ann@host/db"),
    ],
)
def test_shown_url_masks_passwords(url, shown):
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # SQLAlchemy cannot parse these (a bad port, a scheme with "-").
        (
            "postgresql://ann:s3cret@host:notaport/db?password=x",
            "postgresql://***@host:notaport/db?password=***",
        ),
        ("my-sql://ann:s3cret@host/db?pwd=x&a=1", "my-sql://***@host/db?pwd=***&a=1"),
        # an unescaped "@" in the password: mask up to the last "@"
        ("postgresql://ann:s3@cret@host/db", "postgresql://***@host/db"),
    ],
)
def test_shown_url_masks_unparsable_urls(url, shown):
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    "url", ["sqlite:///runs/a@b/study.db", "sqlite://", "journal:/tmp/x@y/j.log", "journal:j.log"]
)
def test_shown_url_leaves_local_storages_alone(url):
    assert shown_url(url) == url


@pytest.mark.parametrize("url", ["", "://", "@", "a://@@", "x://u:p@", "?password", "\x00://:@"])
def test_shown_url_never_raises(url):
    assert isinstance(shown_url(url), str)


def test_connection_failure_is_masked():
    url = "postgres://user:pw@127.0.0.1:9/db"  # nothing listens on port 9
    with pytest.raises(UserError) as caught:
        open_storage(url, heartbeats=False)
    message = str(caught.value)
    assert message.startswith("cannot open storage 'postgres://user:***@127.0.0.1:9/db': ")
    assert "not understood" not in message
    assert "pw" not in message
    assert "\n" not in message


def test_unknown_scheme_is_refused_masked():
    with pytest.raises(UserError, match="not understood") as caught:
        open_storage("ftp://u:secret@x/y")
    assert "ftp://u:***@x/y" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_journal_storage(tmp_path):
    path = tmp_path / "j.log"
    storage = open_storage(f"journal:{path}")
    assert isinstance(storage, JournalStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert path.exists()
    reopened = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}"))
    assert len(reopened.trials) == 2


def test_sqlite_heartbeats(tmp_path):
    def on_stale(study, trial):
        pass

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", on_stale=on_stale)
    assert isinstance(storage, RDBStorage)
    assert storage.get_heartbeat_interval() == HEARTBEAT == 10
    assert storage.get_heartbeat_stale_trial_callback() is on_stale
    assert storage.grace_period == 60
    plain = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeats=False)
    assert plain.get_heartbeat_interval() is None


def test_import_leaves_optuna_logging_alone():
    code = (
        "import optuna; v = optuna.logging.get_verbosity(); "
        "import ccsearch.search.storage; assert optuna.logging.get_verbosity() == v"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bulk_read_equals_optunas_read_of_a_real_study(tiny_runs, tmp_path):
    """``all_trials`` (one pass of SQL, for tables and dashboards) returns exactly what
    Optuna's ``get_trials`` does: a real run's trials, plus hand-made ones with every kind
    of value Optuna stores (infinities, intermediate values, failed, running, waiting)."""
    import math
    import shutil

    import optuna

    from ccsearch.search import run
    from ccsearch.search.bulk_read import all_trials

    shutil.copytree(tiny_runs[0], tmp_path / "run")
    study = run.open_folder(tmp_path / "run").study
    dists = {"x": optuna.distributions.FloatDistribution(0.0, 1.0, log=False),
             "n": optuna.distributions.IntDistribution(1, 64, log=True),
             "c": optuna.distributions.CategoricalDistribution(["relu", None, 3, 1.5])}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, values=[math.inf, -math.inf],
        params={"x": 0.25, "n": 8, "c": None}, distributions=dists,
        intermediate_values={0: 1.5, 3: -math.inf, 7: math.nan},
        user_attrs={"nested": {"a": [1, 2.5, None]}}, system_attrs={"kept_as": 3}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              params={"c": 3}, distributions={"c": dists["c"]}))
    study.enqueue_trial({"x": 0.5})
    study.ask()  # the enqueued trial, now running
    study.enqueue_trial({"c": "relu"})  # waiting

    fresh = run.open_folder(tmp_path / "run").study  # nothing cached in either read
    mine = all_trials(fresh)
    theirs = run.open_folder(tmp_path / "run").study.get_trials(deepcopy=False)
    assert len(mine) == len(theirs) > 5
    for a, b in zip(mine, theirs, strict=True):
        nan = {k for k, v in b.intermediate_values.items() if v != v}
        assert {k for k, v in a.intermediate_values.items() if v != v} == nan
        for t in (a, b):
            for k in nan:
                t.intermediate_values.pop(k)
        assert a == b, f"trial {b.number} read differently"
    assert [t.number for t in mine] == list(range(len(mine)))
    made = next(t for t in mine if "nested" in t.user_attrs)
    assert made.intermediate_values == {0: 1.5, 3: -math.inf} and made.values == [math.inf, -math.inf]
    assert [t.state.name for t in mine[-3:]] == ["FAIL", "RUNNING", "WAITING"]
