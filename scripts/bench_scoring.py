"""Benchmark: score every member of a truth table under a grid of scoring recipes, once per (recipe, member,
seed), into a JSON-lines cache (`nasdd.validate.scoring.ScoreCache`); calibration and held-out evaluation
(`nasdd.validate.calibrate`) are then table lookups.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_scoring.py --dataset fashion_mnist \
        --truth results/bench_fashion_mnist/truth.csv --cache results/bench_fashion_mnist/calibrated/scores.jsonl

The grid is `nasdd.validate.calibrate.GRID` (in priority order; `--configs 0,3` runs a part of it).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from nasdd.data import load_dataset
from nasdd.validate.calibrate import grid_recipes
from nasdd.validate.pool import read_archs
from nasdd.validate.scoring import ScoreCache, score_pool
from nasdd.validate.table import TruthTable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--truth", help="truth table CSV (its members are scored; its cost is the unit)")
    p.add_argument("--archs", help="instead of --truth: JSON-lines pool file (with --truth-grads)")
    p.add_argument("--truth-grads", type=float, help="sample-gradients of one truth training (with --archs)")
    p.add_argument("--cache", required=True, help="JSON-lines score cache (appended; reruns resume)")
    p.add_argument("--budget", default="1/30", help="fraction of one truth training per candidate (default 1/30)")
    p.add_argument("--configs", default=None, help="comma-separated grid indices (default: all, in order)")
    p.add_argument("--seeds", default="0", help="scoring seeds (default 0)")
    p.add_argument("--members", default=None, help="I:J, score only members I..J-1 of the pool (one per worker)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from nasdd.cost import parse_fraction

    bundle = load_dataset(args.dataset)
    if args.truth:
        table = TruthTable.load(args.truth)
        table.check(dataset_key=bundle.key)
        pool = table.archs()
        truth_grads = table.training_grads()
    else:
        pool, truth_grads = read_archs(args.archs), args.truth_grads
    if args.members:
        i, j = (int(v) if v else None for v in args.members.split(":"))
        pool = pool[i:j]
    budget = parse_fraction(args.budget)
    recipes, bn = grid_recipes(budget, truth_grads)
    order = [int(i) for i in args.configs.split(",")] if args.configs else range(len(recipes))
    cache = ScoreCache(args.cache)
    seeds = [int(s) for s in args.seeds.split(",")]
    for i in order:
        r = recipes[i]
        print(f"config {i}: {r} (bn {bn})", flush=True)
        score_pool(cache, bundle, pool, replace(r, bn_images=bn), seeds, truth_grads=truth_grads)


if __name__ == "__main__":
    main()
