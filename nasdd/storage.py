"""Optuna storages from a URL, for every stage that shares work through one (search, validate).

- None: in memory (nothing shared, nothing kept);
- `journal:PATH` or a PATH ending `.log`: a journal file (many workers on a shared file system);
- any SQLAlchemy URL: an RDB storage (`sqlite:///PATH` for one machine, `postgresql://...` for many),
  opened safely when many workers start at once on a fresh database, optionally with Optuna heartbeats.

Workers name themselves `host:pid` (`worker_id`); `died_here` tells a dead worker on this host.
"""

from __future__ import annotations

import inspect
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from nasdd.errors import NasddError

ATTEMPTS = 6


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
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        if "://" not in url:
            raise NasddError(
                f"unknown storage {url!r}; give an SQLAlchemy URL (sqlite:///PATH, postgresql://...), "
                "journal:PATH or a PATH ending .log"
            )
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # workers on one file wait, not fail
        if heartbeat is not None and heartbeat < 1:
            raise NasddError(f"--heartbeat must be >= 1 second, got {heartbeat}")
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
            f"cannot open storage {url!r}: {_first_line(exc)}; check the URL and that the server is up"
        ) from exc


def rdb_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """`optuna.storages.RDBStorage(url, **kwargs)`, retried when a concurrent worker is creating the tables.

    Workers started together on an empty database all try to create Optuna's tables; on PostgreSQL the
    losers fail with a duplicate-key IntegrityError (or ProgrammingError), on SQLite with an
    OperationalError "table ... already exists". Once one has won, the tables exist and a retry opens them.
    """
    import sqlalchemy.exc

    for attempt in range(ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
            lost_race = not isinstance(e, sqlalchemy.exc.OperationalError) or "already exists" in str(e)
            if attempt == ATTEMPTS - 1 or not lost_race:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)  # noqa: S311 - jitter, not security
    raise AssertionError("unreachable")


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
