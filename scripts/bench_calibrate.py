"""Benchmark: calibrated scoring at matched cost, held out — few-shot (k members of the target's truth table)
and transfer (the mnist5k table), against early stopping at the same budget, with a stacked ranker.

Reads the score caches written by `scripts/bench_scoring.py` (no training here):

    PYTHONPATH=. python scripts/bench_calibrate.py --out results/bench_fashion_mnist/calibrated

Writes `heldout_splits.csv` (every option on every split), `heldout.csv` (aggregated: tau with CIs over splits,
paired delta-tau against early stopping with CIs over splits and architectures, top-k metrics, cost),
`transfer.csv` (the mnist5k-calibrated recipe on every Fashion member), `grid_insample.csv` (every grid recipe
on every member: descriptive, NOT held out), `distill_question.csv` and `heldout.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from nasdd.cost import break_even
from nasdd.validate import calibrate as cal
from nasdd.validate import stats
from nasdd.validate.scoring import ScoreCache
from nasdd.validate.table import TruthTable

ZERO_COST = ["grad_norm", "snip", "synflow", "naswot", "params"]
DISTILLED = ["dc-ipc10", "dsa-ipc10", "mtt-ipc10", "dm-ipc10", "dc-space-ipc10", "dsa-space-ipc10", "mtt-space-ipc10",
             "dm-space-ipc10"]  # fmt: skip


def grid_of(caches: str, table: TruthTable, truth_grads: float, budget: float) -> cal.Grid:
    """The grid on the members scored under its first configuration; `caches` is comma-separated (merged)."""
    paths = caches.split(",")
    c = ScoreCache(paths[0])
    for p in paths[1:]:
        c.records.update(ScoreCache(p).records)
    recipes, bn = cal.grid_recipes(budget, truth_grads)
    dk = table.meta["dataset_key"]
    first = recipes[0]
    keys = [k for k in table.frame.index if c.get(dk, first, bn, k, 0) is not None]
    return cal.grid_table(c, dk, keys, recipes, bn)


def insample(grid: cal.Grid, truth: pd.Series, keys: list[str], path: Path) -> None:
    """Every grid recipe on every member (descriptive, NOT held out)."""
    t = truth.loc[keys].to_numpy()
    rows = []
    for k, r in grid.recipes.items():
        rows.append({"config": grid.config[k], "passes": r.passes, "lr": r.lr, "batch_size": r.batch_size,
                     "bn_images": r.bn_images, "score": r.score, "recipe_key": k, "members": len(keys),
                     **cal.metrics(t, grid.scores.loc[keys, k].to_numpy())})  # fmt: skip
    pd.DataFrame(rows).sort_values("tau", ascending=False).to_csv(path, index=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--truth", default="results/bench_fashion_mnist/truth.csv")
    p.add_argument("--scores", default="results/bench_fashion_mnist/scores_30.csv", help="committed cheap scores")
    p.add_argument(
        "--cache",
        default=",".join(f"results/bench_fashion_mnist/calibrated/scores{s}.jsonl" for s in ("", "_b", "_c")),
        help="comma-separated score caches (one per worker), merged",
    )
    p.add_argument("--source-truth", default="nasdd/validate/truth_mnist5k_convnet_cpu_pooled_60.csv")
    p.add_argument("--source-cache", default="results/bench_fashion_mnist/calibrated/scores_mnist5k.jsonl")
    p.add_argument("--budget", type=float, default=1 / 30)
    p.add_argument("--ks", default="5,10,20")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--candidates", type=int, default=1000, help="candidates the calibration is amortised over")
    p.add_argument("--out", default="results/bench_fashion_mnist/calibrated")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table = TruthTable.load(args.truth)
    truth = table.accuracies().mean(axis=1)
    factors = table.frame[list(cal.FACTORS)]
    grid = grid_of(args.cache, table, table.training_grads(), args.budget)
    keys = list(grid.scores.index)
    cheap = pd.read_csv(args.scores, index_col="arch_key")
    b = args.budget
    tag = "@1/30" if abs(b - 1 / 30) < 1e-9 else f"@{b:g}"
    baseline = cheap[f"early-0.4ep{tag}"]
    extra = cheap[[f"{z}{tag}" for z in ZERO_COST]].rename(columns=lambda c: c.split("@")[0])
    uncal = grid.key_of(0, False, "val_acc")
    print(f"{len(keys)} Fashion members scored under {len(set(grid.config.values()))} grid configurations")

    # grid, in sample (descriptive only)
    t_all = truth.loc[keys].to_numpy()
    insample(grid, truth, keys, out / "grid_insample.csv")

    # transfer: chosen on the mnist5k table (every member with a truth), applied to every Fashion member
    transfer_key = None
    src_path = Path(args.source_truth)
    if src_path.exists() and Path(args.source_cache).exists():
        src = TruthTable.load(src_path)
        src_truth = src.accuracies().mean(axis=1).dropna()
        sgrid = grid_of(args.source_cache, src, src.training_grads(), args.budget)
        sgrid_all = grid_of(args.source_cache, src, src.training_grads(), args.budget)
        insample(sgrid_all, src_truth, [k for k in sgrid_all.scores.index if k in src_truth.index],
                 out / "grid_insample_mnist5k.csv")  # fmt: skip
        common = set(grid.config.values())
        sgrid.recipes = {k: r for k, r in sgrid.recipes.items() if sgrid.config[k] in common}
        sgrid.config = {k: c for k, c in sgrid.config.items() if k in sgrid.recipes}
        sgrid.scores = sgrid.scores[list(sgrid.recipes)]
        members = [k for k in sgrid.scores.index if k in src_truth.index]
        chosen = sgrid.recipes[cal.calibrate(sgrid, src_truth, members, n_trials=args.trials, seed=0)]
        cfg = sgrid.config[chosen.key()]
        transfer_key = grid.key_of(cfg, chosen.bn_images > 0, chosen.score)
        src_tau = stats.kendall_tau(
            src_truth.loc[members].to_numpy(), sgrid.scores.loc[members, chosen.key()].to_numpy()
        )
        tr = []
        for name, col in (("transfer", grid.scores[transfer_key]), ("uncalibrated", grid.scores[uncal])):
            rs = stats.rank_statistics(t_all, col.loc[keys].to_numpy(), n_resamples=1000)
            pd_ = stats.paired_delta_tau(t_all, col.loc[keys].to_numpy(), baseline.loc[keys].to_numpy())
            tr.append({"option": name, "members": len(keys), "source_members": len(members),
                       "source_seeds": int(src.accuracies().loc[members].notna().sum(axis=1).min()),
                       "config": cfg, "score": chosen.score if name == "transfer" else "val_acc",
                       "bn": chosen.bn_images > 0 if name == "transfer" else False, "source_tau": src_tau,
                       "tau": rs["tau"], "tau_low": rs["tau_low"], "tau_high": rs["tau_high"],
                       "dtau_vs_early": pd_["dtau"], "dtau_low": pd_["dtau_low"], "dtau_high": pd_["dtau_high"],
                       **{m: v for m, v in cal.metrics(t_all, col.loc[keys].to_numpy()).items() if m != "tau"},
                       "target_trainings": 0})  # fmt: skip
        pd.DataFrame(tr).to_csv(out / "transfer.csv", index=False)
        print(pd.DataFrame(tr).round(3).to_string())

    # few-shot, repeated held-out splits
    if not args.ks:  # --ks '': the in-sample grid and the transfer only
        return
    rng = np.random.default_rng(0)
    split_table = []
    draws: dict[tuple[int, str], list[np.ndarray]] = {}
    for k in [int(v) for v in args.ks.split(",")]:
        for i, (cset, ev) in enumerate(cal.splits(keys, k, args.repeats, seed=k)):
            assert not set(cset) & set(ev)
            rows, options = cal.split_rows(
                cal.HeldOut(grid, truth, factors, baseline, extra, uncal), cset, ev,
                n_trials=args.trials, seed=i, transfer=transfer_key,
            )  # fmt: skip
            t_ev = truth.loc[ev].to_numpy()
            for r in rows:
                r["split"] = i
                split_table.append(r)
            seed = int(rng.integers(2**31))
            for name, sc in options.items():  # paired draws over the evaluation architectures (same for all)
                draws.setdefault((k, name), []).append(
                    cal.paired_draws(t_ev, sc.to_numpy(), baseline.loc[ev].to_numpy(), 100, np.random.default_rng(seed))
                )
        print(f"k={k}: {args.repeats} splits done", flush=True)
    st = pd.DataFrame(split_table)
    st.to_csv(out / "heldout_splits.csv", index=False)
    T = 1.0  # costs in truth trainings
    agg = []
    for (k, opt), g in st.groupby(["k", "option"], sort=False):
        base = st[(st.k == k) & (st.option == "baseline")].set_index("split")["tau"]
        d = g.set_index("split")["tau"] - base
        pooled = np.concatenate(draws[(k, opt)]) + 0  # tau(option) - tau(early) per draw
        fewshot_cost = k / args.candidates if opt in ("fewshot", "stack_ridge", "stack_gbr", "factors_only") else 0.0
        per_cand = (b if opt != "factors_only" else 0.0) + (5 * 64 / 648000 if opt.startswith("stack") else 0.0)
        agg.append({"k": k, "option": opt, "splits": len(g), "eval_members": len(keys) - k,
                    "tau": g.tau.mean(), "tau_low": g.tau.quantile(0.025), "tau_high": g.tau.quantile(0.975),
                    "dtau_vs_early": d.mean(),
                    "dtau_low_splits": d.quantile(0.025), "dtau_high_splits": d.quantile(0.975),
                    "dtau_low": np.quantile(pooled, 0.025), "dtau_high": np.quantile(pooled, 0.975),
                    "splits_dtau_pos": float((d > 0).mean()),
                    "rho_top10": g.rho_top10.mean(), "rho_top20": g.rho_top20.mean(), "p@5": g["p@5"].mean(),
                    "regret@1": g["regret@1"].mean(), "per_candidate": per_cand,
                    "calibration_trainings": k if fewshot_cost else 0,
                    "amortised": per_cand + fewshot_cost,
                    "break_even": break_even(per_cand, k * T if fewshot_cost else 0, T),
                    "fewshot_choice": g.chosen.mode().iat[0] if opt == "fewshot" else ""})  # fmt: skip
    agg = pd.DataFrame(agg)
    agg.to_csv(out / "heldout.csv", index=False)
    print(agg[["k", "option", "tau", "tau_low", "tau_high", "dtau_vs_early", "dtau_low", "dtau_high", "rho_top20",
               "p@5", "amortised"]].round(3).to_string())  # fmt: skip
    distill_question(cheap, truth, out, tag)
    plot(agg, out / "heldout.png", f"Fashion-MNIST, the {len(keys)} members scored under the grid, 1/30 of a truth "
         "training per candidate: held-out tau (95% range over splits)")  # fmt: skip


def distill_question(cheap: pd.DataFrame, truth: pd.Series, out: Path, tag: str) -> None:
    """Each cached distilled proxy against the random / herding subset of the same size, paired, every member."""
    keys = list(cheap.index)
    t = truth.loc[keys].to_numpy()
    rows = []
    for d in DISTILLED:
        col = f"{d}{tag}"
        if col not in cheap:
            continue
        for ref in ("random-ipc10", "herding-ipc10"):
            r = stats.paired_delta_tau(t, cheap[col].to_numpy(), cheap[f"{ref}{tag}"].to_numpy())
            rows.append({"proxy": d, "against": ref, "scoring": "val_acc, uncalibrated (cached)",
                         "tau": stats.kendall_tau(t, cheap[col].to_numpy()), **r})  # fmt: skip
    pd.DataFrame(rows).to_csv(out / "distill_question.csv", index=False)


def plot(agg: pd.DataFrame, path: Path, title: str) -> None:
    """Held-out tau per option and calibration size, with the 95% range over splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = list(dict.fromkeys(agg.option))
    ks = sorted(agg.k.unique())
    fig, ax = plt.subplots(figsize=(9, 4))
    w = 0.8 / len(opts)
    for j, o in enumerate(opts):
        g = agg[agg.option == o].set_index("k").reindex(ks)
        x = np.arange(len(ks)) + j * w
        ax.bar(x, g.tau, w, label=o)
        ax.errorbar(x, g.tau, yerr=[g.tau - g.tau_low, g.tau_high - g.tau], fmt="none", ecolor="k", lw=0.8)
    ax.axhline(0.75, color="r", ls="--", lw=1, label="target 0.75")
    ax.set_xticks(np.arange(len(ks)) + 0.4 - w / 2, [f"k={k} calibration members" for k in ks])
    ax.set_ylabel("Kendall tau on held-out members")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
