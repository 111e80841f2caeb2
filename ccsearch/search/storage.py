"""Opening Optuna storages the way a search needs them.

- a SQLite file (default, ``runs/<study>/study.db``): safe for one writer and a few local
  workers (a long busy timeout turns "database is locked" into waiting);
- ``journal:PATH``: Optuna's journal file backend, for many local worker processes;
- ``postgresql://...``: for workers on many machines.

RDB storages get heartbeats: a trial whose worker died (no heartbeat for ``GRACE``
seconds) is marked failed and its architecture retried (Optuna's
``RetryHeartbeatStaleTrialCallback``).  A trial that *raised* is ccsearch's to classify and
is recorded with its reason instead.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from ccsearch.errors import UserError

# Heartbeats and the retry callback are marked experimental in Optuna; we rely on them.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

HEARTBEAT = 10  # seconds between a running trial's heartbeats
GRACE = 60  # seconds without a heartbeat before a trial counts as dead
RETRIES = 2  # times a dead trial's architecture is retried


def open_storage(url: str, heartbeats: bool = True) -> optuna.storages.BaseStorage:
    """``heartbeats=False`` for processes that ask/tell outside ``Study.optimize`` (the Ray
    driver): Optuna's heartbeats only run inside ``optimize``."""
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise UserError(
            f"storage {url!r} not understood: use sqlite:///PATH, postgresql://... or journal:PATH"
        )
    given = url
    if url.startswith(("postgresql://", "postgres://")):  # the driver ccsearch installs
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine_kwargs = (
        {"connect_args": {"timeout": 120}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    )
    try:
        beats = (
            {
                "heartbeat_interval": HEARTBEAT,
                "grace_period": GRACE,
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(RETRIES),
            }
            if heartbeats
            else {}
        )
        return RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
    except Exception as err:  # driver missing, server down, bad credentials
        message = str(err).splitlines()[0].replace(url, shown_url(url))
        raise UserError(f"cannot open storage {shown_url(given)!r}: {message}") from None


def shown_url(url: str) -> str:
    """The storage URL with its password masked, for printing and for files."""
    if "://" not in url or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: mask everything before the host
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def fail_interrupted_trials(study: optuna.Study) -> list[int]:
    """Fail interrupted trials and retry their architectures (for ``run --resume``, whose
    process owns the study): trials a killed process left RUNNING, and trials recorded as
    ``interrupted`` (Ctrl-C) that were not retried yet."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    failed = []
    for trial in trials:
        if trial.state == states.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, "status", "interrupted")
            study._storage.set_trial_user_attr(trial._trial_id, "reason", "its process was killed")
            if not study._storage.set_trial_state_values(trial._trial_id, states.FAIL):
                continue
        elif not (
            trial.state == states.FAIL
            and trial.user_attrs.get("status") == "interrupted"
            and trial.number not in retried
        ):
            continue
        retry(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    return failed
