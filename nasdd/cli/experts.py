"""`nasdd experts`: train expert trajectories for trajectory matching (see `nasdd.distill.experts`); with
`--match-space`, one buffer per member of the pool that `mtt --match-space` draws."""

from __future__ import annotations

import argparse
import json
import time

from nasdd.cli import add_data_args, load_data_from_args
from nasdd.errors import NasddError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--arch", default=None, help="expert network as ArchSpec JSON (default: the DC ConvNet)")
    p.add_argument("--match-space", default=None, metavar="SPACE", help="train buffers for a match pool instead")
    p.add_argument("--match-pool", type=int, default=None, metavar="N", help="members of --match-space (default 16)")
    p.add_argument("--seed", type=int, default=0, help="pool seed: the --seed of the mtt distillation")
    p.add_argument("--num-experts", type=int, default=5)
    p.add_argument("--epochs", type=int, default=15, help="epochs per expert (parameters saved after each)")
    p.add_argument(
        "--buffer-root",
        default=None,
        help="buffers go to BUFFER_ROOT/experts/... (default: $XDG_CACHE_HOME/nasdd, i.e. ~/.cache/nasdd)",
    )
    p.add_argument("--recipe", default=None, help="key=value overrides of the plain-SGD expert recipe")
    p.add_argument("--zca", action="store_true", help="train on ZCA-whitened images (for mtt's zca option)")


def command(args: argparse.Namespace) -> int:
    from nasdd.arch import ArchSpec
    from nasdd.distill.base import match_pool
    from nasdd.distill.experts import EXPERT_RECIPE, train_experts
    from nasdd.models import DEFAULT_ARCH
    from nasdd.train import TrainRecipe

    bundle = load_data_from_args(args)
    try:
        arch = ArchSpec.from_json(args.arch) if args.arch else DEFAULT_ARCH
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise NasddError(f"--arch is not valid ArchSpec JSON: {exc}") from exc
    archs = [arch]
    if args.match_space is not None:  # the pool `nasdd distill --method mtt --match-space` draws
        archs = match_pool(args.match_space, args.match_pool, args.seed)[1]
    for arch in archs:
        start = time.perf_counter()
        buf = train_experts(
            bundle,
            arch=arch,
            num_experts=args.num_experts,
            epochs=args.epochs,
            recipe=TrainRecipe.parse(args.recipe, EXPERT_RECIPE),
            root=args.buffer_root,
            zca=args.zca,
            device=args.device,
        )
        print(
            f"{len(buf.trajectories)} experts x {args.epochs} epochs in {buf.folder} "
            f"(trained {buf.trained_epochs} epochs now, {time.perf_counter() - start:.1f} s; "
            f"buffer cost {buf.seconds:.1f} s, {buf.sample_grads:,} sample-gradients)"
        )
    return 0
