"""Validation: audit how faithfully proxies rank architectures against full-data training.

`validate(bundle, pool, proxies, ...)` returns the tables (see `nasdd.validate.audit`); pools come
from `nasdd.validate.pool`, peers from `nasdd.validate.peers`, statistics from `nasdd.validate.stats`.
The names are loaded on first use, so the torch-free modules (`config`, `stats`, `pool`) import without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Validation", "catalog", "validate"]


def __getattr__(name: str) -> Any:
    if name in ("Validation", "validate"):
        from nasdd.validate import audit

        return getattr(audit, name)
    if name == "catalog":
        from nasdd.validate.peers import catalog

        return catalog
    raise AttributeError(f"module 'nasdd.validate' has no attribute {name!r}")
