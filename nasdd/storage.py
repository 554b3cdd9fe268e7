"""Optuna storages from a URL, for every stage that shares work through one (search, validate).

- None: in memory (nothing shared, nothing kept);
- `journal:PATH` or a PATH ending `.log`: a journal file (many workers on a shared file system);
- any SQLAlchemy URL: an RDB storage (`sqlite:///PATH` for one machine, `postgresql://...` for many),
  opened safely when many workers start at once on a fresh database, optionally with Optuna heartbeats.

Workers name themselves `host:pid` (`worker_id`); `died_here` tells a dead worker on this host.

Secrets and faults: `masked(url)` is how every URL is written or printed (password as `***`);
`from_env(flag)` reads `NASDD_STORAGE` when no flag is given. An RDB storage pings a pooled connection
before use and reconnects with backoff for up to `RECONNECT_S` seconds (a database restart), retrying
reads, idempotent writes and heartbeats that a dropped connection interrupted; `storage_errors(url)` turns
what is left (a server down for longer, a full disk, a damaged journal) into one line that names the
masked storage and says how to resume. A journal whose last line was cut off mid-write is repaired
(that record never finished); a damaged line elsewhere is refused with one line.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import random
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages.journal import JournalFileBackend

from nasdd.errors import NasddError

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect, Engine

ATTEMPTS = 6
ENV = "NASDD_STORAGE"  # the storage URL when no --storage is given (keeps a password off the command line)
RECONNECT_S = 60.0  # how long a worker keeps reconnecting to a database that went away ($NASDD_RECONNECT_S)
RETRIES = 3  # times a storage call interrupted by a dropped connection is retried (reads, idempotent writes)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<password>[^\s]*)@(?P<host>[^@\s]*)")


def masked(url: str | None) -> str | None:
    """`url` as nasdd writes and prints it: the password of an SQLAlchemy URL shown as `***`
    (SQLAlchemy's own rendering); file paths, journal names and URLs without a password pass through."""
    if not isinstance(url, str) or "://" not in url or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        text = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: mask by pattern
        text = url
    return hide(text) if url.count("@") > 1 or text == url else text  # an unescaped '@' in the password


def hide(text: str) -> str:
    """`text` with the password of every URL in it masked (for messages that may quote a URL)."""
    return _USERINFO.sub(lambda m: f"{m['head']}***@{m['host']}" if m["password"] != "***" else m[0], text)


def from_env(flag: str | None) -> str | None:
    """The storage URL: the `--storage` flag when given, else `NASDD_STORAGE`, else None (the default)."""
    return flag or os.environ.get(ENV) or None


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of an SQLite file (absolute, so every worker names the same file)."""
    return f"sqlite:///{Path(path).resolve()}"


def open_storage(
    url: str | None, *, heartbeat: int | None = None, on_stale: Callable | None = None
) -> optuna.storages.BaseStorage:
    """The storage a URL names (see the module doc); a bad URL or an unreachable server is a NasddError.

    `heartbeat` (RDB storages): running trials beat every `heartbeat` seconds and are stale after
    twice that; `on_stale(study, trial)` is then called for each stale trial (e.g. to queue it again).
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    try:
        if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path))
            _check_journal(path, backend)
            return optuna.storages.JournalStorage(backend)
        if "://" not in url:
            raise NasddError(
                f"unknown storage {url!r}; give an SQLAlchemy URL (sqlite:///PATH, postgresql://...), "
                "journal:PATH or a PATH ending .log"
            )
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # workers on one file wait, not fail
        else:  # a server: test a pooled connection before use, so a restarted server is reconnected to
            kwargs["engine_kwargs"] = {"pool_pre_ping": True}
        if heartbeat is not None and heartbeat < 1:
            raise NasddError(f"`heartbeat` must be >= 1 second, got {heartbeat}", params=("heartbeat",))
        if heartbeat:
            kwargs.update(heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
            if on_stale is not None:  # older Optuna 4 releases call it failed_trial_callback
                new = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                kwargs["heartbeat_stale_trial_callback" if new else "failed_trial_callback"] = on_stale
        return rdb_storage(url, **kwargs)
    except NasddError:
        raise
    except Exception as exc:  # SQLAlchemy and driver errors: a bad URL or an unreachable server
        raise NasddError(
            f"cannot open storage {masked(url)!r}: {hide(_first_line(exc))}; check the URL and that the server is up"
        ) from None


def rdb_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """`optuna.storages.RDBStorage(url, **kwargs)`, retried when a concurrent worker is creating the tables.

    Workers started together on an empty database all try to create Optuna's tables; on PostgreSQL the
    losers fail with a duplicate-key IntegrityError (or ProgrammingError), on SQLite with an
    OperationalError "table ... already exists". Once one has won, the tables exist and a retry opens them.
    """
    import sqlalchemy.exc

    for attempt in range(ATTEMPTS):
        try:
            store = _RDBStorage(url, **kwargs)
            if not url.startswith("sqlite"):
                _reconnect_with_backoff(store.engine)
            return store
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
            lost_race = not isinstance(e, sqlalchemy.exc.OperationalError) or "already exists" in str(e)
            if attempt == ATTEMPTS - 1 or not lost_race:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)  # noqa: S311 - jitter, not security
    raise AssertionError("unreachable")


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose reads, idempotent writes and heartbeats are retried (`RETRIES` times)
    when a dropped connection interrupted them; the retry reconnects (see `_reconnect_with_backoff`).
    Creating a trial, setting a parameter or a state is not retried: it may have been committed."""


def _retrying(name: str) -> Callable:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: _RDBStorage, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(RETRIES + 1):
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if attempt == RETRIES or not _disconnected(exc):
                    raise
        raise AssertionError("unreachable")

    return call


for _name in (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "_get_best_trial_id",
    "set_study_user_attr",
    "set_study_system_attr",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_trial_intermediate_value",
    "record_heartbeat",
):
    setattr(_RDBStorage, _name, _retrying(_name))
_beat = _RDBStorage.record_heartbeat


def _record_heartbeat(self: optuna.storages.RDBStorage, trial_id: int) -> None:
    """A heartbeat that fails (the server away for longer than the reconnect window) is skipped: it runs in
    Optuna's thread, where an error would print a traceback, and a trial is stale only after two missed
    beats; the worker's own next storage call reports a server that stays away."""
    with contextlib.suppress(Exception):
        _beat(self, trial_id)


_RDBStorage.record_heartbeat = _record_heartbeat  # type: ignore[method-assign]


def _disconnected(exc: BaseException) -> bool:
    """Whether `exc` (or the error Optuna wrapped in it) is a connection the server dropped."""
    import sqlalchemy.exc

    return any(isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated for e in (exc, exc.__cause__))


def _reconnect_with_backoff(engine: Engine) -> None:
    """New connections of `engine` are retried with exponential backoff (0.25 s doubling to 5 s) for up to
    `RECONNECT_S` seconds, so a worker waits out a database restart instead of failing."""
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Dialect, record: object, cargs: tuple, cparams: dict) -> Any:
        deadline, wait = time.monotonic() + float(os.environ.get("NASDD_RECONNECT_S", RECONNECT_S)), 0.25
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)
                wait = min(2 * wait, 5.0)


@contextlib.contextmanager
def storage_errors(url: str | None, resume: str = "rerun the same command to resume") -> Iterator[None]:
    """Turn a storage failure in the block (a server gone for longer than `RECONNECT_S`, a full disk, a
    damaged journal) into a NasddError naming the masked storage and how to resume."""

    try:
        yield
    except NasddError:
        raise
    except Exception as exc:
        cause = _storage_cause(exc)
        if cause is None:
            _journal_error(exc, url, resume)
            raise
        raise NasddError(
            f"storage {masked(url) or 'in the `out` folder'} failed: {hide(_first_line(cause))}; finished work is "
            f"kept there: once it is reachable again (server up, disk space free), {resume}",
            params=("out",),
        ) from None


def _storage_cause(exc: BaseException) -> BaseException | None:
    """The database error behind `exc`: itself, the error Optuna wrapped, or the one being handled when
    `exc` was raised (Optuna's clean-up after a failed write can fail in turn)."""
    import sqlalchemy.exc

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, sqlalchemy.exc.SQLAlchemyError):
            return seen
        if isinstance(seen, optuna.exceptions.StorageInternalError):
            return seen.__cause__ or seen
        seen = seen.__cause__ or seen.__context__
    return None


def _journal_error(exc: BaseException, url: str | None, resume: str) -> None:
    """Raise a one-line NasddError when `exc` is the journal backend reading a damaged line."""
    if isinstance(exc, ValueError) and (isinstance(exc, json.JSONDecodeError) or str(exc) == "Invalid log format."):
        raise NasddError(
            f"journal {masked(url) or 'in the `out` folder'} is damaged ({_first_line(exc)}); restore the file or "
            f"remove its damaged line, then {resume}",
            params=("out",),
        ) from None


def _check_journal(path: Path, backend: JournalFileBackend) -> None:
    """Repair a journal whose last line was cut off mid-write (a killed worker, a full disk): that record
    never finished, so it is dropped with one line on stderr. A damaged line elsewhere is a NasddError."""
    from optuna.storages.journal._file import get_lock_file

    if not path.exists() or path.stat().st_size == 0:
        return
    with get_lock_file(backend._lock), open(path, "rb+") as f:  # noqa: SLF001
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
            print(
                f"nasdd: journal {path}: dropped a record cut off mid-write ({len(data) - end} bytes)", file=sys.stderr
            )
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                raise NasddError(
                    f"journal {path} is damaged at line {number} (not a JSON record); remove that line or "
                    "restore the file, then rerun"
                ) from None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message, without SQLAlchemy's '(driver.Error)' prefix."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text.split(") ", 1)[1] if text.startswith("(") and ") " in text else text


def worker_id() -> str:
    """This process as a worker: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def died_here(worker: str) -> bool:
    """Whether `worker` (`host:pid`) ran on this host and its process is gone (other hosts: never known)."""
    host, _, pid = str(worker).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
