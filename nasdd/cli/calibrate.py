"""`nasdd calibrate`: choose a scoring recipe on a calibration truth table and write it as a recipe file
(`nasdd.validate.scoring.ScoringRecipe`) that `nasdd validate --scoring` reads.

Two sources:

- `transfer`: another dataset's truth table in the same space (default: the shipped 60-member mnist5k
  `convnet_cpu_pooled` table). Its members are scored on that dataset under the grid, the recipe is chosen
  there, and its settings (passes, lr, batch, BN re-estimation, score kind) carried to the target. No
  training on the target dataset at all.
- `fewshot`: k members of the target's own truth table (k = 5, 10, 20 are the measured sizes). Their k
  full trainings are part of the cost; amortised over C candidates they add k/C of a truth training to each.

Every member is scored once per grid training configuration (cached in --cache, so reruns and other
splits are lookups); an Optuna TPE study over (configuration, BN re-estimation, score kind) maximises
Kendall tau on the calibration members only. The recipe file names those members: they are never scored
with it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nasdd.cli import add_data_args, load_data_from_args
from nasdd.errors import NasddError

DEFAULT_TRANSFER = "truth_mnist5k_convnet_cpu_pooled_60.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Choose a scoring recipe (passes over real images, lr, batch, BatchNorm re-estimation, score kind) "
        "by an Optuna study maximising Kendall tau on a calibration truth table, and write it as a recipe "
        "file. Sources: 'transfer' uses another dataset's table in the same space (default: the shipped "
        "60-member mnist5k convnet_cpu_pooled table) and trains nothing on the target; 'fewshot' uses k "
        "members of the target's own truth table, whose k full trainings are part of the cost (k/C of a "
        "truth training per candidate over C candidates). The recipe names its calibration members and is "
        "never scored on them."
    )
    parser.epilog = (
        "examples: nasdd calibrate --dataset fashion_mnist --space convnet_cpu_pooled --source transfer "
        "--truth-recipe full,epochs=12,batch_size=128,lr=0.02 --out recipe.json; nasdd calibrate --dataset "
        "fashion_mnist --space convnet_cpu_pooled --source fewshot --table truth.csv --k 10 --out recipe.json"
    )
    add_data_args(parser)
    parser.add_argument("--space", required=True, help="search space name (the recipe is pinned to it)")
    parser.add_argument(
        "--source", required=True, choices=("transfer", "fewshot"),
        help="transfer: another dataset's truth table, no target trainings; fewshot: k members of the "
        "target's own truth table (their trainings count in the cost)",
    )  # fmt: skip
    parser.add_argument(
        "--table", default=None, metavar="CSV",
        help=f"calibration truth table: transfer default the shipped {DEFAULT_TRANSFER}; fewshot: the "
        "target's table (required)",
    )  # fmt: skip
    parser.add_argument("--k", type=int, default=10, help="fewshot: calibration members drawn from --table")
    parser.add_argument("--budget", default="1/30", help="per-candidate budget, a fraction of one truth training")
    parser.add_argument("--truth-recipe", default="full", help="the target's truth recipe (the budget's unit)")
    parser.add_argument("--trials", type=int, default=80, help="Optuna trials over the grid")
    parser.add_argument(
        "--grid", default=None, metavar="I,J",
        help="only these configurations of nasdd.validate.calibrate.GRID (indices; default: all 12)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the member draw and the sampler")
    parser.add_argument("--cache", default=None, help="score cache, JSON lines (default: OUT with .scores.jsonl)")
    parser.add_argument("--out", required=True, help="the recipe file (JSON) to write")


def _grid_indices(text: str | None, n: int) -> list[int]:
    if not text:
        return list(range(n))
    try:
        use = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise NasddError(f"--grid takes comma-separated indices 0..{n - 1}, got {text!r}") from None
    if not use or use[0] < 0 or use[-1] >= n:
        raise NasddError(f"--grid takes comma-separated indices 0..{n - 1}, got {text!r}")
    return use


def command(args: argparse.Namespace) -> int:
    import numpy as np

    from nasdd.cost import parse_fraction, training_grads
    from nasdd.data import load_dataset
    from nasdd.spaces import load_space
    from nasdd.train import TrainRecipe
    from nasdd.validate import calibrate as cal
    from nasdd.validate.scoring import ScoreCache, score_pool
    from nasdd.validate.table import SHIPPED, TruthTable

    space = load_space(args.space)
    budget = parse_fraction(args.budget)
    target = load_data_from_args(args)
    out = Path(args.out)
    cache = ScoreCache(args.cache or out.with_suffix(".scores.jsonl"))
    if args.source == "transfer":
        table = TruthTable.load(args.table or SHIPPED / DEFAULT_TRANSFER)
        if table.meta["dataset_key"] == target.key:
            raise NasddError("--source transfer needs another dataset's table; for the target's own, use fewshot")
        bundle = load_dataset(table.meta["dataset"], root=args.data_root)
        members = list(table.frame.index)
    else:
        if not args.table:
            raise NasddError("--source fewshot needs --table (the target's truth table)")
        table = TruthTable.load(args.table)
        table.check(dataset_key=target.key)
        bundle = target
        if not 2 < args.k < len(table.frame):
            raise NasddError(f"--k must lie between 3 and {len(table.frame) - 1}, got {args.k}")
        rng = np.random.default_rng(args.seed)
        members = sorted(table.frame.index[rng.permutation(len(table.frame))[: args.k]])
    table.check(space=space.name)
    truth = table.accuracies().mean(axis=1)
    grads = table.training_grads()
    recipes, bn = cal.grid_recipes(budget, grads)
    use = _grid_indices(args.grid, len(recipes))
    archs = {a.key(): a for a in table.archs()}
    for r in (recipes[i] for i in use):
        with_bn = cal.replace(r, bn_images=bn)  # every grid training also records BN re-estimation
        score_pool(cache, bundle, [archs[k] for k in members], with_bn, [0], truth_grads=grads, log=False)
    grid = cal.grid_table(cache, bundle.key, members, [recipes[i] for i in use], bn)
    grid.config = {k: use[c] for k, c in grid.config.items()}  # indices into GRID
    chosen = grid.recipes[cal.calibrate(grid, truth, members, n_trials=args.trials, seed=args.seed)]
    tau = cal.stats.kendall_tau(truth.loc[members].to_numpy(), grid.scores.loc[members, chosen.key()].to_numpy())
    if args.source == "transfer":  # the same settings, sized for the target's budget
        target_grads = training_grads(TrainRecipe.parse(args.truth_recipe, "full"), len(target.y_train))
        t_recipes, t_bn = cal.grid_recipes(budget, target_grads)
        cfg = next(i for i, r in enumerate(recipes) if r.training_key() == chosen.training_key())
        recipe = cal.replace(t_recipes[cfg], score=chosen.score, bn_images=t_bn if chosen.bn_images else 0)
        source, used = f"transfer:{table.meta['dataset']}:{len(members)} members", []
    else:
        recipe, source, used = chosen, f"fewshot:{table.meta['dataset']}:k={len(members)}", members
    recipe = cal.pinned(recipe, space=space.name, dataset_key=target.key, source=source, members=used)
    recipe.save(out)
    trainings = 0 if args.source == "transfer" else len(members)
    print(
        f"{out}: scoring recipe {recipe.key()} ({recipe.score}, passes {recipe.passes:g}, lr {recipe.lr:g}, "
        f"batch {recipe.batch_size}, BN images {recipe.bn_images}); calibration tau {tau:.3f} on "
        f"{len(members)} {table.meta['dataset']} members; {trainings} target truth trainings"
    )
    return 0
