"""Validation: audit how faithfully proxies rank architectures against full-data training.

`validate(bundle, pool, proxies, config)` returns the tables (see `nasdd.validate.audit`); pools come
from `nasdd.validate.pool`, peers from `nasdd.validate.peers`, statistics from `nasdd.validate.stats`.
"""

from __future__ import annotations

from nasdd.validate.audit import Validation, validate
from nasdd.validate.peers import catalog

__all__ = ["Validation", "catalog", "validate"]
