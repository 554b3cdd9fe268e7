"""Benchmark: transfer calibration (mnist5k -> Fashion-MNIST, zero target trainings) at every budget (issue 24).

For each budget: `nasdd calibrate --source transfer` chooses a scoring recipe on the shipped 60-member mnist5k
table (its grid trainings cached in `--work`), then `nasdd.validate.validate` scores every Fashion member of the
benchmark's truth table with that recipe and with the uncalibrated one at the same budget (early stopping, lr
0.02, batch 128, val accuracy, no BatchNorm re-estimation, the same forward-pass overhead), and the paired Δτ
between them is bootstrapped over the same members. Held out: the recipe is chosen on mnist5k only; nothing of
Fashion-MNIST is read before the scoring. Per-member scores go to `<out without .csv>/scores.csv` (Fashion) and
`source_scores.csv` (the chosen recipes on the mnist5k members), read by `bench_transfer_stack.py`.

    OMP_NUM_THREADS=1 python scripts/bench_transfer.py --threads 1 --quiet
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import _bench
import pandas as pd

from nasdd.cli import main as nasdd
from nasdd.cli.calibrate import DEFAULT_TRANSFER
from nasdd.data import load_dataset
from nasdd.spaces import load_space
from nasdd.storage import sqlite_url
from nasdd.validate import stats
from nasdd.validate.audit import validate
from nasdd.validate.calibrate import grid_recipes
from nasdd.validate.config import AuditConfig
from nasdd.validate.scoring import ScoreCache, ScoringRecipe, score
from nasdd.validate.table import SHIPPED, TruthTable

TRUTH_RECIPE = "full,epochs=12,batch_size=128,lr=0.02"  # the Fashion-MNIST benchmark's truth


def scored(recipe: ScoringRecipe, name: str, args, bundle, table, space) -> pd.Series:  # noqa: ANN001
    """Every table member's score under `recipe` (the audit's scoring row), by arch key."""
    config = AuditConfig(peers="", scoring=recipe, storage=sqlite_url(f"{args.work}/results.db"))
    res = validate(bundle, table.archs(), (), config, space=space, out=Path(args.work) / name, device=args.device,
                   truth_table=table)  # fmt: skip
    pa = res.per_arch.set_index("arch_key")
    return pa[next(c for c in pa.columns if c.startswith("scored-"))]


def source_scores(chosen: ScoringRecipe, budget: float, args) -> pd.Series:  # noqa: ANN001
    """The chosen recipe's scores on the mnist5k members it was chosen on (read from the calibration's cache)."""
    src = TruthTable.load(SHIPPED / DEFAULT_TRANSFER)
    grid, bn = grid_recipes(budget, src.training_grads())
    config = next(r for r in grid if (r.passes, r.lr, r.batch_size) == (chosen.passes, chosen.lr, chosen.batch_size))
    recipe = replace(config, score=chosen.score, bn_images=bn if chosen.bn_images else 0)
    cache = ScoreCache(f"{args.work}/mnist5k_scores.jsonl")
    dk = src.meta["dataset_key"]
    return pd.Series({k: score(cache.get(dk, config, bn, k, 0), recipe) for k in src.frame.index}, dtype=float)


def main() -> None:
    ap = _bench.parser(__doc__, out="results/bench_fashion_mnist/calibrated/transfer_budgets.csv",
                       work="runs/bench_transfer", dataset="fashion_mnist")  # fmt: skip
    ap.add_argument("--table", default="results/bench_fashion_mnist/truth.csv")
    ap.add_argument("--space", default="convnet_cpu_pooled")
    ap.add_argument("--budgets", nargs="+", default=["1/1000", "1/300", "1/100", "1/30"])
    ap.add_argument("--trials", type=int, default=80, help="the calibration study's trials")
    ap.add_argument("--resamples", type=int, default=1000)
    args = _bench.parse(ap)
    table, space, bundle = TruthTable.load(args.table), load_space(args.space), load_dataset(args.dataset)
    truth = table.accuracies().mean(axis=1)
    recipes = Path(args.out).with_suffix("")
    recipes.mkdir(parents=True, exist_ok=True)
    rows, target, source = [], {}, {}
    for b in args.budgets:
        path = recipes / f"recipe_{b.replace('/', 'of')}.json"
        argv = ["calibrate", "--dataset", args.dataset, "--space", args.space, "--source", "transfer", "--budget", b,
                "--truth-recipe", TRUTH_RECIPE, "--trials", str(args.trials), "--cache",
                f"{args.work}/mnist5k_scores.jsonl", "--out", str(path)]  # fmt: skip
        argv += ["--quiet"] if args.quiet else []
        if nasdd(argv) != 0:
            raise SystemExit(f"nasdd calibrate failed at budget {b}")
        chosen = ScoringRecipe.load(path)
        plain = replace(chosen, passes=0.0, lr=0.02, batch_size=128, score="val_acc", bn_images=0)
        a = scored(chosen, f"transfer-{b.replace('/', 'of')}", args, bundle, table, space)
        u = scored(plain, f"uncalibrated-{b.replace('/', 'of')}", args, bundle, table, space)
        target[f"transfer@{b}"], target[f"uncalibrated@{b}"] = a, u
        source[f"transfer@{b}"] = source_scores(chosen, float(Fraction(b)), args)
        keys = list(a.index)
        t = truth.loc[keys].to_numpy(float)
        pair = stats.paired_delta_tau(t, a.to_numpy(float), u.loc[keys].to_numpy(float), n_resamples=args.resamples)
        rows.append({"budget": b, "budget_fraction": float(Fraction(b)), "members": len(keys),
                     "passes": chosen.passes, "lr": chosen.lr, "batch_size": chosen.batch_size,
                     "bn_images": chosen.bn_images, "score": chosen.score, "recipe_key": chosen.key(),
                     "tau_transfer": stats.kendall_tau(t, a.to_numpy(float)),
                     "tau_uncalibrated": stats.kendall_tau(t, u.loc[keys].to_numpy(float)), **pair,
                     "target_trainings": 0})  # fmt: skip
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.6g")
    for name, cols in (("scores", target), ("source_scores", source)):  # per member, for stacking (no retraining)
        frame = pd.DataFrame(cols).rename_axis("arch_key")
        frame.to_csv(recipes / f"{name}.csv", float_format="%.6g")
    _bench.record(args.out)


if __name__ == "__main__":
    main()
