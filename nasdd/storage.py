"""Opening an Optuna RDB storage safely when many workers start at once on a fresh database."""

from __future__ import annotations

import random
import time
from typing import Any

import optuna

ATTEMPTS = 6


def rdb_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """`optuna.storages.RDBStorage(url, **kwargs)`, retried when a concurrent worker is creating the tables.

    Workers started together on an empty database all try to create Optuna's tables; on PostgreSQL the
    losers fail with a duplicate-key IntegrityError (or ProgrammingError). Once one has won, the
    tables exist and a retry opens them.
    """
    import sqlalchemy.exc

    for attempt in range(ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)  # noqa: S311 - jitter, not security
    raise AssertionError("unreachable")
