"""What datasets, search spaces, model families, methods, peers, samplers and pruners exist (`nasdd list`).

The rows come from the registries themselves, which import torch (seconds). So that `nasdd list` starts
at once, `catalog.json` beside this module holds a snapshot of them: it is used while the method modules
(discovered by file, see nasdd.distill) are the ones it was taken with and, for a space, while its YAML is
unchanged; otherwise the rows are read live. Refresh it with `python -m nasdd.catalog` after changing a
description (tests/cli/test_main.py checks that it equals the registries).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from nasdd.spaces import SPACES_DIR, load_space, space_names
from nasdd.utils import write_json

KINDS = ("datasets", "spaces", "families", "methods", "peers", "samplers", "strategies", "pruners")
SNAPSHOT = Path(__file__).with_name("catalog.json")
PACKAGE = Path(__file__).resolve().parent


def live_rows(kind: str) -> list[tuple[str, str]]:
    """(name, description) rows of one kind, from its registry (imports what it lists)."""
    if kind == "datasets":
        from nasdd.data import dataset_catalog

        return dataset_catalog()
    if kind == "spaces":
        out = []
        for n in space_names():
            s = load_space(n)
            out.append((n, f"{s.family}, {s.size:,} members: {s.description}"))
        return out
    if kind == "families":
        from nasdd.models import FAMILIES

        return [(n, f.description) for n, f in FAMILIES.items()]
    # kinds provided by later stages: each module offers `catalog() -> list[(name, description)]`
    if kind == "pruners":
        from nasdd.search import pruner_catalog

        return pruner_catalog()
    module = {"methods": "nasdd.distill", "peers": "nasdd.validate.peers", "samplers": "nasdd.search",
              "strategies": "nasdd.search.strategies"}[kind]  # fmt: skip
    try:
        return importlib.import_module(module).catalog()
    except ModuleNotFoundError:
        return []


def modules_fingerprint() -> list[str]:
    """The method modules (a new one adds a method, so the snapshot is stale)."""
    return sorted(p.name for p in (PACKAGE / "distill").glob("*.py"))


def _space_hash(name: str) -> str:
    return hashlib.sha256((SPACES_DIR / f"{name}.yaml").read_bytes()).hexdigest()


def take_snapshot() -> dict:
    """Every kind's live rows, with what they depend on."""
    rows = {k: [list(r) for r in live_rows(k)] for k in KINDS if k != "spaces"}
    spaces = {n: [_space_hash(n), d] for n, d in live_rows("spaces")}
    assert set(spaces) == set(space_names())
    return {"modules": modules_fingerprint(), "rows": rows, "spaces": spaces}


def _load_snapshot() -> dict | None:
    try:
        snap = json.loads(SNAPSHOT.read_text())
    except (OSError, ValueError):
        return None
    return snap if snap.get("modules") == modules_fingerprint() else None


def rows(kind: str) -> list[tuple[str, str]]:
    """The rows `nasdd list` prints: from the snapshot where it is current, live otherwise."""
    snap = _load_snapshot()
    if snap is None:
        return live_rows(kind)
    if kind != "spaces":
        return [(n, d) for n, d in snap["rows"][kind]]
    names = space_names()
    if all(n in snap["spaces"] and snap["spaces"][n][0] == _space_hash(n) for n in names):
        return [(n, snap["spaces"][n][1]) for n in names]
    return live_rows(kind)


if __name__ == "__main__":
    write_json(SNAPSHOT, take_snapshot())
    print(f"wrote {SNAPSHOT}")
