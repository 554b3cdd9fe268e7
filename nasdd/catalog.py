"""`nasdd list`: what datasets, search spaces, model families, methods, peers and samplers exist."""

from __future__ import annotations

import argparse
import importlib

KINDS = ("datasets", "spaces", "families", "methods", "peers", "samplers")


def _rows(kind: str) -> list[tuple[str, str]]:
    if kind == "datasets":
        from nasdd.data import dataset_catalog

        return dataset_catalog()
    if kind == "spaces":
        from nasdd.spaces import load_space, space_names

        out = []
        for n in space_names():
            s = load_space(n)
            out.append((n, f"{s.family}, {s.size:,} members: {s.description}"))
        return out
    if kind == "families":
        from nasdd.models import FAMILIES

        return [(n, f.description) for n, f in FAMILIES.items()]
    # kinds provided by later stages: each module offers `catalog() -> list[(name, description)]`
    module = {"methods": "nasdd.distill", "peers": "nasdd.validate.peers", "samplers": "nasdd.search"}[kind]
    try:
        return importlib.import_module(module).catalog()
    except ModuleNotFoundError:
        return []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="all", choices=[*KINDS, "all"], help="what to list")


def command(args: argparse.Namespace) -> int:
    for kind in KINDS if args.what == "all" else (args.what,):
        rows = _rows(kind)
        print(f"{kind}:")
        if not rows:
            print("  (none yet)")
        width = max((len(n) for n, _ in rows), default=0)
        for name, desc in rows:
            print(f"  {name:<{width}}  {desc}".rstrip())
    return 0
