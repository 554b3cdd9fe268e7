"""The pool options of `nasdd validate` and `nasdd truth`: `--pool N` / `--archs FILE` and `--pool-seed`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from nasdd.errors import NasddError

if TYPE_CHECKING:
    from nasdd.arch import ArchSpec
    from nasdd.spaces import SearchSpace


def add_pool_arguments(parser: argparse.ArgumentParser, group: argparse._MutuallyExclusiveGroup) -> None:
    """`--pool N` / `--archs FILE` (into the mutually exclusive `group`) and `--pool-seed`."""
    group.add_argument("--pool", type=int, help="draw this many architectures spread over the space's factors")
    group.add_argument("--archs", help="JSON-lines file of ArchSpec dicts")
    parser.add_argument("--pool-seed", type=int, default=0, help="seed of the pool draw (default 0)")


def pool_from_args(args: argparse.Namespace, space: SearchSpace | None) -> list[ArchSpec] | None:
    """The pool that `--pool` (drawn from `space`) or `--archs` names; None when neither is given."""
    from nasdd.spaces import draw_pool
    from nasdd.validate.pool import read_archs

    if args.pool is not None:
        if space is None:
            raise NasddError("--pool needs --space (the space to draw from)")
        return draw_pool(space, args.pool, args.pool_seed)
    return read_archs(args.archs) if args.archs else None
