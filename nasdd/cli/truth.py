"""`nasdd truth`: build (or grow, or merge) a truth table — full-data training of a pool, one CSV row per
architecture (see `nasdd.validate.table`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nasdd.cli import add_data_args, load_data_from_args
from nasdd.cli.pool import add_pool_arguments, pool_from_args
from nasdd.errors import NasddError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_args(parser)
    parser.add_argument("--space", help="search space name or YAML path (the table pins it)")
    src = parser.add_mutually_exclusive_group()
    add_pool_arguments(parser, src)
    src.add_argument("--merge", nargs="+", metavar="CSV", help="merge these tables into --out (no training)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per architecture (default 3)")
    parser.add_argument("--recipe", default="full", help="truth training recipe (default 'full')")
    parser.add_argument("--shard", default=None, help="I/N: train only every N-th member from I (one per worker)")
    parser.add_argument("--out", required=True, help="the table's CSV file (grown in place when it exists)")


def command(args: argparse.Namespace) -> int:
    from nasdd.spaces import load_space
    from nasdd.train import TrainRecipe, train_arch
    from nasdd.validate import table as tt

    out = Path(args.out)
    if args.merge:
        merged = tt.TruthTable.merge([tt.TruthTable.load(p) for p in args.merge])
        merged.save(out)
        print(f"merged {len(args.merge)} tables into {out}: {tt.describe(merged)}")
        return 0
    if not args.space:
        raise NasddError("nasdd truth needs --space (the table pins the search space)")
    if args.pool is None and not args.archs:
        raise NasddError("give the pool: --pool N (drawn from --space) or --archs FILE")
    if args.seeds < 1:
        raise NasddError(f"--seeds must be at least 1, got {args.seeds}")
    space = load_space(args.space)
    drawn = pool_from_args(args, space)
    assert drawn is not None  # --pool or --archs, checked above
    pool = tt.shard(drawn, args.shard)
    recipe = TrainRecipe.parse(args.recipe, "full")
    bundle = load_data_from_args(args)
    if out.exists():
        table = tt.TruthTable.load(out)
        table.check(dataset_key=bundle.key, space=space.name, recipe_key=recipe.key())
    else:
        table = tt.TruthTable.new(dataset=bundle.name, dataset_key=bundle.key, space=space.name, recipe=recipe)
    test = bundle.split("test")

    def train(arch, seed):  # noqa: ANN001, ANN202
        return train_arch(
            arch, bundle.x_train, bundle.y_train, recipe, num_classes=bundle.num_classes, seed=seed,
            device=args.device, eval_data=test,
        )

    tt.build(table, out, pool, list(range(args.seeds)), train, factors=space.factors())
    print(f"{out}: {tt.describe(table)}")
    return 0
