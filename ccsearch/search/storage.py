"""Opening the Optuna storage a search is given (``--storage``), and showing its URL safely.

- ``sqlite:///PATH`` (the default, ``runs/<study>/study.db``): one writer and a few local
  workers; a long busy timeout turns "database is locked" into waiting; write-ahead
  logging with ``synchronous=NORMAL`` makes a commit cost microseconds, not an fsync (safe
  against a killed process; the last commits may be lost only to a power cut; local disks
  only, as SQLite's locking needs anyway);
- ``journal:PATH``: Optuna's journal file, for many local worker processes (no heartbeats);
- ``postgresql://...`` (or ``postgres://``, ``mysql...``): for workers on many machines.

RDB storages get heartbeats when asked: a trial with no heartbeat for ``GRACE`` seconds is
marked failed and handed to the caller's ``on_stale`` callback; and they write a trial's
sampled parameters in one transaction (``parameters_together``), where Optuna commits each.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import unquote, unquote_plus

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from ccsearch.errors import UserError

HEARTBEAT = 10  # seconds between a running trial's heartbeats
GRACE = 60  # seconds without a heartbeat before a trial counts as dead

StaleTrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]

_RDB_SCHEME = re.compile(r"(?i)(sqlite|postgres|postgresql|mysql)(\+\w+)?://")
_MASK = "***"
_PASSWORD_KEYS = {"password", "passwd", "pwd"}
_QUERY_ITEM = re.compile(r"([^&;=]*)=([^&;]*)")


def open_storage(
    url: str,
    heartbeats: bool = True,
    on_stale: StaleTrialCallback | None = None,
    must_exist: bool = False,
) -> optuna.storages.BaseStorage:
    """The storage at ``url``; a ``UserError`` (with the password masked) if it cannot be
    opened.  ``must_exist``: refuse a SQLite or journal file that is not there rather than
    create it (a worker or resume joins a storage, it never makes one).

    With ``heartbeats`` (RDB storages only) a trial's owner beats every ``HEARTBEAT``
    seconds (``recovery.Heartbeat``) and ``on_stale(study, trial)`` is called for each
    trial whose beats stopped for ``GRACE`` seconds.
    """
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        if not path:
            raise UserError(f"storage {shown_url(url)!r} has no path: use journal:PATH")
        if must_exist:
            _check_exists(url, path)
        try:
            return JournalStorage(JournalFileBackend(path))
        except OSError as err:
            raise UserError(f"cannot open storage {shown_url(url)!r}: {err}") from None
    match = _RDB_SCHEME.match(url)
    if match is None:
        raise UserError(
            f"storage {shown_url(url)!r} not understood: "
            "use sqlite:///PATH, postgresql://... or journal:PATH"
        )
    dialect, driver = match.group(1).lower(), match.group(2) or ""
    if dialect in ("postgres", "postgresql"):
        dialect, driver = "postgresql", driver or "+psycopg"  # the driver ccsearch installs
    rdb_url = f"{dialect}{driver.lower()}://{url[match.end() :]}"
    if must_exist and dialect == "sqlite":
        from sqlalchemy.engine import make_url

        _check_exists(url, make_url(rdb_url).database or ":memory:")
    engine_kwargs = (
        {"connect_args": {"timeout": 120}} if dialect == "sqlite" else {"pool_pre_ping": True}
    )
    beats = (
        {
            "heartbeat_interval": HEARTBEAT,
            "grace_period": GRACE,
            "heartbeat_stale_trial_callback": on_stale,
        }
        if heartbeats
        else {}
    )
    try:
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            storage = BatchingRDBStorage(rdb_url, engine_kwargs=engine_kwargs, **beats)
        if dialect == "sqlite":
            _write_ahead(storage)
        return storage
    except Exception as err:  # driver missing, server down, bad credentials, bad URL
        lines = str(err).strip().splitlines()
        message = _scrub(lines[0] if lines else type(err).__name__, url, rdb_url)
        raise UserError(f"cannot open storage {shown_url(url)!r}: {message}") from None


class BatchingRDBStorage(RDBStorage):
    """Optuna's RDB storage, but inside ``parameters_together`` the parameters a sampler
    sets, and the trial's user attributes, are held and then written in one transaction:
    a MnasNet-A1 candidate has about 13 parameters, and one commit each was most of an
    over-budget trial's cost.  Held values are visible to their own trial (``optuna.Trial``
    keeps them) and reach the storage before anything else of the trial is written; if
    sampling raises, they are dropped, as if the process had died there."""

    _held: list | None = None

    def _set_trial_param(self, trial_id, param_name, param_value_internal, distribution,
                         previous_distribution) -> None:
        if self._held is None:
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution,
                                     previous_distribution)
        else:
            self._held.append(("param", trial_id, param_name, param_value_internal,
                               distribution, previous_distribution))

    def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
        if self._held is None:
            super().set_trial_user_attr(trial_id, key, value)
        else:
            self._held.append(("user_attr", trial_id, key, value))

    @contextmanager
    def held_parameters(self) -> Iterator[None]:
        from optuna.storages._rdb.storage import _create_scoped_session

        self._held = []
        try:
            yield
            held = self._held
        finally:
            self._held = None
        if held:
            with _create_scoped_session(self.scoped_session, True) as session:
                self._write_held(session, held)

    def _write_held(self, session, held: list) -> None:
        """Optuna's checks (the trial may be updated, each distribution fits the study's),
        with the trial looked up once, not once per parameter."""
        from optuna.distributions import check_distribution_compatibility, distribution_to_json
        from optuna.storages._rdb import models

        updatable = set()
        for kind, trial_id, *args in held:
            if kind == "user_attr":
                self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel,
                                                    trial_id, *args)
                continue
            name, value, distribution, previous = args
            if previous is None:  # a parameter new to this process: Optuna's own path
                self._set_trial_param_without_commit(session, trial_id, name, value,
                                                     distribution)
                continue
            if trial_id not in updatable:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                self.check_trial_is_updatable(trial_id, trial.state)
                updatable.add(trial_id)
            check_distribution_compatibility(previous, distribution)
            session.add(models.TrialParamModel(
                trial_id=trial_id, param_name=name, param_value=value,
                distribution_json=distribution_to_json(distribution)))


def parameters_together(storage: optuna.storages.BaseStorage):
    """A context in which a trial's sampled parameters and user attributes are written in
    one transaction where the storage can (a ``BatchingRDBStorage``, behind Optuna's cache);
    elsewhere a context that changes nothing."""
    backend = getattr(storage, "_backend", storage)
    return backend.held_parameters() if isinstance(backend, BatchingRDBStorage) else nullcontext()


def _write_ahead(storage: RDBStorage) -> None:
    """SQLite in WAL mode (kept in the file) and ``synchronous=NORMAL`` (per connection)."""
    from sqlalchemy import event

    def on_connect(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # the connections RDBStorage opened had neither


def _check_exists(url: str, path: str) -> None:
    if path == ":memory:" or not Path(path).expanduser().is_file():
        raise UserError(f"no storage at {shown_url(url)!r}: {path} does not exist "
                        "(ccsearch run creates a study's storage)")


def shown_url(url: str) -> str:
    """The storage URL with every password (in the netloc or the query string) masked as
    ``***``, for printing and for files.  Never raises."""
    try:
        return _mask(str(url))[0]
    except Exception:  # pragma: no cover - a last resort, _mask is not expected to fail
        return _MASK


def _scrub(message: str, *urls: str) -> str:
    """``message`` with the raw URLs shown masked and any of their passwords replaced."""
    for url in sorted(set(urls), key=len, reverse=True):
        message = message.replace(url, shown_url(url))
    secrets = {s for url in urls for s in _mask(url)[1] if s}
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, _MASK)
    return message


def _mask(url: str) -> tuple[str, list[str]]:
    """The URL with its passwords masked, and the raw (and decoded) texts that were hidden."""
    if url.startswith(("sqlite:", "journal:")):
        return url, []
    scheme, sep, rest = url.partition("://")
    if sep:
        prefix = scheme + sep
        head, tail, hidden = _mask_netloc(url, rest)
    else:  # no scheme: anything before an "@" may be credentials
        prefix = ""
        creds, at, host = url.rpartition("@")
        head, tail, hidden = (f"{_MASK}@", host, [creds]) if at else ("", url, [])
    before, question, query = tail.partition("?")
    if question:
        query, query_hidden = _mask_query(query)
        hidden += query_hidden
        tail = before + question + query
    hidden += [decode(s) for s in hidden for decode in (unquote, unquote_plus)]
    return prefix + head + tail, hidden


def _mask_netloc(url: str, rest: str) -> tuple[str, str, list[str]]:
    """Split ``rest`` (the URL after ``://``) into masked credentials and the rest."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed_ok = "@" not in (parsed.host or "")  # an unescaped "@" in a password
    except Exception:
        parsed, parsed_ok = None, False
    if parsed_ok and parsed is not None:
        if parsed.password is None:
            return "", rest, []
        # The same split as SQLAlchemy's: user up to ":" or "/", password up to "@".
        creds = re.match(r"([^:/]*):([^@]*)@", rest)
        if creds is not None:
            return f"{creds.group(1)}:{_MASK}@", rest[creds.end() :], [creds.group(2)]
    if "@" not in rest:
        return "", rest, []
    creds, host = rest.rsplit("@", 1)
    hidden = [creds] + ([creds.split(":", 1)[1]] if ":" in creds else [])
    return f"{_MASK}@", host, hidden


def _mask_query(query: str) -> tuple[str, list[str]]:
    """The query string with password values masked, keeping its order and spelling."""
    hidden: list[str] = []

    def mask(item: re.Match[str]) -> str:
        key, value = item.group(1), item.group(2)
        if unquote_plus(key).strip().lower() not in _PASSWORD_KEYS:
            return item.group(0)
        hidden.append(value)
        return f"{key}={_MASK}"

    return _QUERY_ITEM.sub(mask, query), hidden
