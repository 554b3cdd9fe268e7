"""`nasdd run`: distil -> search -> validate -> report in one command (see `nasdd.pipeline`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nasdd.cli import add_data_args, load_data_from_args
from nasdd.errors import NasddError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nasdd.pipeline import PRESETS  # imports the distillers (torch), not the search or the report

    add_data_args(p)
    p.add_argument("--methods", default="dm,random", help="comma list of distillation methods (default dm,random)")
    p.add_argument("--ipc", type=int, default=10, help="images per class (default 10)")
    p.add_argument("--preset", default="quick", choices=list(PRESETS), help="size of every stage (default quick)")
    p.add_argument("--space", default=None, help="search space (default: the preset's; quick: convnet_cpu_pooled)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage (same seed, same result)")
    p.add_argument("--scoring", default=None, metavar="JSON", help="scoring recipe file from `nasdd calibrate`")
    p.add_argument("--out", default=None, help="output folder (default runs/run-<time>)")
    p.add_argument(
        "--budget",
        default=None,
        help="search within this many sample-gradients (648k, 3.2M) with `nasdd search --strategy prescreen`: a snip "
        "pre-screen, then synchronous successive halving on the full data (rungs: epochs of the truth recipe)",
    )


def command(args: argparse.Namespace) -> int:
    from nasdd.cost import parse_grads
    from nasdd.pipeline import RunConfig, run_pipeline
    from nasdd.validate.scoring import ScoringRecipe

    out = Path(args.out or f"runs/run-{time.strftime('%Y%m%d-%H%M%S')}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods:
        raise NasddError("--methods is empty; give at least one method (see `nasdd list methods`)")
    config = RunConfig(
        methods,
        ipc=args.ipc,
        preset=args.preset,
        space=args.space,
        seed=args.seed,
        budget=parse_grads(args.budget) if args.budget is not None else None,
        scoring=ScoringRecipe.load(args.scoring) if args.scoring else None,
    )
    files = run_pipeline(load_data_from_args(args), config, out=out, device=args.device)
    print(f"report: {files.get('html', files.get('md'))}")
    return 0
