"""Benchmark: a proxy search against a full-data search (same space, sampler, seed and trial count).

For each search it records wall seconds, sample-gradient evaluations (total and per trial), and the
full-data val and test accuracy of the architecture the search chose (its top trial retrained on the
whole training split with the `full` recipe), and the winner among its top `--retrain-top` retrained
the same way (the usual last step of a proxy search; picked by full-data val, test only reported). Rows:

- `proxy`: candidates train on an ipc-10 proxy with a short CPU recipe (`--proxy-recipe`);
- `proxy-dc`: the same proxy with the DC evaluation recipe (`proxy`: 300 epochs) for reference;
- `full`: candidates train on the full training split with the `full` recipe.

Study folders under `--work` are resumable: a rerun trains nothing already done and reuses the
recorded wall time of the run that trained. The proxy is a stratified random subset unless
`--proxy DIR` names a distilled one (the CSV says which).

    python scripts/bench_search.py --dataset mnist5k --trials 12   # ~10 minutes on 2 CPU cores

With `--budgets` it compares searches at equal total compute instead (`nasdd.search.equal_compute`: a proxy
search with retraining, the same on a random subset, Hyperband and successive halving on the full data,
a zero-cost top-k, and `nasdd search --strategy prescreen` (its protocol, `nasdd.search.halving`, replayed)),
on the Fashion-MNIST ranking benchmark's truth table and its recorded proxy scores; full-data trainings are
cached as learning curves (`nasdd.validate.curves`) shared by every search; `--replay-only` never trains (a search that
needs an unrecorded epoch is marked); rows already in the CSV are kept (resumable):

    OMP_NUM_THREADS=1 python scripts/bench_search.py --budgets 0.3,0.5,1,3,10,30 --seeds 5 --replay-only --quiet
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path

import _bench
import matplotlib
import pandas as pd

from nasdd.arch import ArchSpec
from nasdd.data import load_dataset
from nasdd.distill import distill
from nasdd.distill.proxy import ProxySet
from nasdd.search import counted_trials, retrain, search
from nasdd.search import equal_compute as ec
from nasdd.search.config import SearchConfig
from nasdd.spaces import load_space
from nasdd.train import TrainRecipe
from nasdd.utils import ensure_dir, write_json
from nasdd.validate.curves import Curves
from nasdd.validate.table import TruthTable

matplotlib.use("Agg")
RANK = "results/bench_fashion_mnist"


def _context(args, table: TruthTable) -> ec.EqualCompute:
    """The truth table's pool, its truth, the ranking benchmark's scores and costs at `--rank-budget`."""
    bundle = load_dataset(table.meta["dataset"])
    table.check(dataset_key=bundle.key)
    recipe = table.recipe
    assert recipe.steps is None, "the truth recipe must count epochs (Hyperband rungs are epochs)"
    summary = pd.read_csv(Path(args.rank) / "summary.csv")
    scores = pd.read_csv(Path(args.rank) / f"scores_{args.rank_budget.split('/')[1]}.csv", index_col="arch_key")
    named = {"proxy-tpe": args.proxy_name, "subset-tpe": args.subset, "zerocost-topk": args.zerocost,
             "prescreen": args.zerocost}  # fmt: skip
    costs = ec.costs_from_rank(summary, args.rank_budget, named)
    curves = Curves(Path(args.out).with_suffix("") / "curves", Path(args.work) / "checkpoints", bundle, recipe,
                    seed=0, train=not args.replay_only)  # fmt: skip
    accs = table.accuracies()
    by_seed = scores_by_seed(Path(args.out).with_suffix("") / f"{args.zerocost}_seeds.csv", args, table, bundle)
    return ec.EqualCompute(load_space(table.meta["space"]), table.archs(), curves, accs.mean(axis=1), scores,
                           recipe.epochs, len(bundle.y_train), costs, accs, by_seed)  # fmt: skip


def scores_by_seed(path: Path, args, table: TruthTable, bundle) -> pd.DataFrame:
    """The zero-cost score of every member with scoring seeds 0..seeds-1, cached in `path`."""
    old = pd.read_csv(path, index_col="arch_key") if path.exists() else pd.DataFrame()
    want = [f"s{s}" for s in range(args.seeds)]
    if set(want) <= set(old.columns) and len(old) == len(table.archs()):
        return old[want]
    df = ec.zerocost_by_seed(args.zerocost, table.archs(), bundle, args.seeds)
    _bench.write(df.reset_index(), path)
    return df


def _locked_upsert(out: Path, row: dict, work: Path) -> None:
    """Add one search's row; several shard processes write the same CSV."""
    with open(ensure_dir(work) / f"{out.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _bench.upsert(out, [row], ["budget_truths", "strategy", "seed"])


def plot(df: pd.DataFrame, path: Path, noise: float | None = None) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    styles = zip("osD^v*", ["-", "--", "-.", ":", "-", "-"], strict=False)
    for i, ((strategy, g), (marker, line)) in enumerate(zip(df.groupby("strategy"), styles, strict=False)):
        m = g.groupby("budget_truths")["regret"]
        x, mean = m.mean().index * 1.05 ** (i - 2), 100 * m.mean()  # dodged: equal lines stay visible
        err = [(mean - 100 * m.min()).clip(lower=0), (100 * m.max() - mean).clip(lower=0)]  # float rounding
        bold = {"linewidth": 2.5, "markersize": 9, "color": "black"} if strategy == "prescreen" else {}
        ax.errorbar(x, mean, yerr=err, marker=marker, linestyle=line, capsize=3, label=strategy, **bold)
    if noise is not None:
        ax.axhspan(0, noise, color="grey", alpha=0.2, label=f"truth's seed std ({noise:.2f} points)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.2, linscale=2)  # linear near the seed noise, compressed above
    ax.set_ylim(bottom=0)
    ax.set_xlabel("total budget (truth trainings of 648k sample-gradients, distillation included)")
    ax.set_ylabel("regret (test accuracy points; bars: min-max over seeds)")
    ax.set_title("Fashion-MNIST, 60-member pool: search at equal compute (replayed curves)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def equal_compute(args) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table, out = TruthTable.load(args.table), Path(args.out)
    jobs = [(b, s, seed) for b in map(float, args.budgets.split(",")) for seed in range(args.seeds)
            for s in args.strategies.split(",")]  # fmt: skip
    i, n = (int(v) for v in args.shard.split("/"))
    ctx = None if args.report else _context(args, table)
    old = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["budget_truths", "strategy", "seed"])
    if "train_seed" in old:  # resumable: rows of this seed model are kept (older rows are redone)
        old = old[old.train_seed.notna() & (old.needs.isna() if "needs" in old else True)]
    else:
        old = old.iloc[0:0]
    have = set(zip(old.budget_truths.astype(float), old.strategy, old.seed.astype(int), strict=True))
    for b, strategy, seed in [] if args.report else jobs[i::n]:
        if (b, strategy, seed) in have:
            continue
        start = time.perf_counter()
        row = ec.run(ctx, strategy, b, seed)
        row["wall_s"] = round(time.perf_counter() - start, 1)
        _locked_upsert(out, row, Path(args.work))
        print(", ".join(f"{k}={v}" for k, v in row.items() if k not in ("winner", "winner_key")), flush=True)
    df = pd.read_csv(out)
    summary = ec.summarise(df)
    _bench.write(summary, out.with_suffix("").with_name(out.stem + "_summary.csv"))
    plot(df, out.with_suffix(".png"), ec.seed_noise(table.accuracies()))
    (out.with_suffix("") / "verdict.md").write_text(ec.verdict(summary, table.accuracies(), df))
    _bench.record(out)
    print(summary.to_string(index=False))


def main() -> None:
    ap = _bench.parser(__doc__, out=None, work="runs/bench_search", device="cpu", threads=1)
    ap.add_argument("--budgets", default=None, help="equal-compute mode: total budgets in truth trainings")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds per budget and strategy (equal compute)")
    ap.add_argument("--strategies", default=",".join(ec.STRATEGIES))
    ap.add_argument("--table", default=f"{RANK}/truth.csv", help="truth table (equal compute)")
    ap.add_argument("--rank", default=RANK, help="ranking benchmark results with the proxy scores")
    ap.add_argument("--rank-budget", default="1/100", help="per-candidate budget of the proxy scores")
    ap.add_argument("--proxy", default=None, help="a distilled proxy folder (default: a random subset at --ipc)")
    ap.add_argument("--proxy-name", default="dm-space-ipc10", help="equal compute: the distilled proxy's rank name")
    ap.add_argument("--subset", default="random-ipc10")
    ap.add_argument("--zerocost", default="snip")
    ap.add_argument("--shard", default="0/1", help="I/N: this process runs every N-th search")
    ap.add_argument("--replay-only", action="store_true", help="equal compute: never train; a search that needs an "
                    "unrecorded epoch gets a row with regret NaN and `needs` naming it")  # fmt: skip
    ap.add_argument("--report", action="store_true", help="equal compute: only the summary, plot and verdict")
    ap.add_argument("--space", default="convnet_cpu")
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--proxy-recipe", default="proxy,epochs=12,batch_size=10")
    ap.add_argument("--retrain-top", type=int, default=3, help="retrain each search's top K on the full data")
    ap.add_argument("--skip-dc", action="store_true", help="skip the 300-epoch DC-recipe proxy search")
    args = _bench.parse(ap)
    if args.budgets:
        args.out = args.out or "results/search_fashion_mnist.csv"
        return equal_compute(args)
    bundle = load_dataset(args.dataset)
    proxy = ProxySet.load(args.proxy, bundle) if args.proxy else distill(bundle, "random", ipc=args.ipc, seed=args.seed)
    runs = [("proxy", proxy, args.proxy_recipe)]
    if not args.skip_dc:
        runs.append(("proxy-dc", proxy, "proxy"))
    runs.append(("full", "full", "full"))
    full_recipe = TrainRecipe.parse("full")
    tag = f"{args.dataset}-{args.space}-{args.sampler}-s{args.seed}-t{args.trials}"
    rows = []
    for name, source, recipe in runs:
        study_name = f"{tag}-{name}"
        folder = Path(args.work) / study_name
        stamp = folder / "bench_wall.json"  # the wall time of the run that did the training
        start = time.perf_counter()
        config = SearchConfig.from_text(
            study_name=study_name, trials=args.trials, sampler=args.sampler, seed=args.seed, recipe=recipe
        )
        study = search(args.space, source, bundle, config, out=folder, device=args.device, show_progress=not args.quiet)
        if not stamp.exists():
            write_json(stamp, {"wall_s": time.perf_counter() - start})
        wall = json.loads(stamp.read_text())["wall_s"]
        trials = counted_trials(study)
        grads = sum(t.user_attrs.get("sample_grads", 0) for t in trials)
        trained = [t for t in trials if "cached_from" not in t.user_attrs]
        kw = {"seed": args.seed, "device": args.device, "show_progress": False}
        ret = retrain(study, bundle, args.retrain_top, full_recipe, **kw)
        chosen, winner = ret.iloc[0], ret[ret["winner"]].iloc[0]
        rows.append({
            "search": name,
            "proxy": "full training split" if source == "full" else proxy.provenance.get("method", "proxy"),
            "proxy_id": trials[0].user_attrs["proxy_id"],
            "train_images": len(bundle.y_train) if source == "full" else len(proxy.images),
            "recipe": recipe,
            "sampler": args.sampler,
            "seed": args.seed,
            "trials": len(trials),
            "trained": len(trained),
            "wall_s": round(wall, 1),
            "sample_grads": grads,
            "sample_grads_per_trial": round(grads / len(trials)),
            "best_search_val": round(study.best_value, 4),
            "chosen_arch": str(ArchSpec.from_json(chosen["arch"])),
            "chosen_full_val": round(chosen["val_accuracy"], 4),
            "chosen_full_test": round(chosen["test_accuracy"], 4),
            "retrain_top": len(ret),
            "retrain_sample_grads": int(ret["sample_grads"].sum()),
            "winner_arch": str(ArchSpec.from_json(winner["arch"])),
            "winner_full_val": round(winner["val_accuracy"], 4),
            "winner_full_test": round(winner["test_accuracy"], 4),
        })  # fmt: skip
    df = pd.DataFrame(rows)
    full = df.set_index("search").loc["full"]
    df["grads_ratio_full_over_this"] = (full["sample_grads_per_trial"] / df["sample_grads_per_trial"]).round(1)
    df["chosen_test_gap_vs_full"] = (df["chosen_full_test"] - full["chosen_full_test"]).round(4)
    df["winner_test_gap_vs_full"] = (df["winner_full_test"] - full["chosen_full_test"]).round(4)
    df["total_grads_with_retrain"] = df["sample_grads"] + df["retrain_sample_grads"]
    out = Path(args.out or f"results/search_{args.dataset}.csv")
    _bench.write(df, out)
    _bench.record(out)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 90):
        print(df.drop(columns=["proxy_id", "sampler", "seed", "chosen_arch", "winner_arch"]).T.to_string())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
