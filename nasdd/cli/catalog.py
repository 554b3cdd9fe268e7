"""`nasdd list`: the rows of `nasdd.catalog` (from its snapshot where current, so it starts without torch)."""

from __future__ import annotations

import argparse

from nasdd.catalog import KINDS, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="all", choices=[*KINDS, "all"], help="what to list")


def command(args: argparse.Namespace) -> int:
    for kind in KINDS if args.what == "all" else (args.what,):
        found = rows(kind)
        print(f"{kind}:")
        if not found:
            print("  (none yet)")
        width = max((len(n) for n, _ in found), default=0)
        for name, desc in found:
            print(f"  {name:<{width}}  {desc}".rstrip())
    return 0
