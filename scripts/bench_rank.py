"""Benchmark: ranking at matched cost — every proxy and peer held to the same per-candidate budget.

Ground truth comes from a committed truth table (`nasdd truth`); each budget is a fraction of one truth
training in sample-gradients. Distilled proxies and the random/herding subsets train each candidate for
that many sample-gradients (`nasdd.validate.budget.budget_recipe`), early stopping trains on the full
data for as many, zero-cost scores cost what they cost. For every budget: Kendall tau with bootstrap CIs,
the paired delta-tau of each distilled proxy against the best cheap peer and between distilled
proxies (the same resampled architectures for both), and each method's break-even number of candidates.

`--score-seeds K` (or a list, `1,3`) averages K training seeds per candidate at the same budget: every trained
option trains each candidate K times (seeds 0..K-1) for B/K sample-gradients each and scores the mean
(`validate(proxy_seeds=K)`); its rows are named `NAME xK` with `seeds` = K. Zero-cost scores are not
trainings and keep their one row. Rows of earlier runs (other budgets, names or K) stay in the result
files, and the paired delta-tau of a budget compares against the best cheap peer of any K there.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/bench_rank.py --proxies runs/bench_rank/proxies/*

A proxy given as `DIR=NAME` is reported as NAME instead of its automatic name (`dsa-space-ipc10`), e.g. to tell
apart two distillations of one method that differ only in length.

Every training is recorded in --storage (an Optuna journal committed beside the results): rerunning
resumes, and a stopped run loses at most the trainings in flight.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _bench
import numpy as np
import pandas as pd

from nasdd.data import load_dataset
from nasdd.distill import ProxySet
from nasdd.errors import NasddError
from nasdd.spaces import load_space
from nasdd.validate import stats, validate
from nasdd.validate.audit import proxy_labels as labels
from nasdd.validate.budget import break_even, budget_recipe, parse_fraction
from nasdd.validate.peers import resolve_peers
from nasdd.validate.table import TruthTable

SHOW = ["budget", "name", "kind", "tau", "tau_low", "tau_high", "rho", "regret@1", "grads_per_candidate"]


def convergence(table: TruthTable, longer: TruthTable, n_resamples: int) -> pd.DataFrame:
    """Recipe R against 2R on the members both tables hold, next to R's (and 2R's) seed-to-seed agreement."""
    keys = [k for k in longer.accuracies().index if k in table.accuracies().index]
    r, r2 = table.accuracies().loc[keys], longer.accuracies().loc[keys]
    opts = {"n_resamples": n_resamples, "ks": ()}
    between = stats.rank_statistics(r.mean(axis=1).to_numpy(), r2.mean(axis=1).to_numpy(), **opts)
    seeds_r = stats.noise_ceiling(r.to_numpy(), **opts)
    seeds_r2 = stats.noise_ceiling(r2.to_numpy(), **opts)
    row = {
        "members": len(keys),
        "recipe": table.meta["recipe"],
        "recipe_2x": longer.meta["recipe"],
        "tau_R_2R": between["tau"],
        "tau_R_2R_low": between["tau_low"],
        "tau_R_2R_high": between["tau_high"],
        "seed_tau_R": seeds_r["tau"],
        "seed_tau_2R": seeds_r2["tau"],
        "acc_R": r.mean(axis=1).mean(),
        "acc_2R": r2.mean(axis=1).mean(),
    }
    row["converged"] = bool(row["tau_R_2R"] >= min(row["seed_tau_R"], 0.85))
    return pd.DataFrame([row])


def audit_budget(
    args: argparse.Namespace, ctx: dict, frac: float, first: bool, k: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summary rows and per-architecture scores of every proxy and peer at one budget, each trained option
    scored as the mean of `k` seeds trained for 1/k of the budget each (named `NAME xk` when k > 1)."""
    bundle, table = ctx["bundle"], ctx["table"]
    grads = frac * ctx["truth_grads"] / k
    peers = resolve_peers(args.peers)
    summaries, scores = [], []
    for i, ipc in enumerate(args.ipcs):
        n = ipc * bundle.num_classes
        recipe = budget_recipe(ctx["proxy_base"], n, grads)
        names = [p.name for p in peers if p.kind == "subset"]
        if i == 0:
            names += [p.name for p in peers if p.kind == "early" or (first and p.kind == "zerocost")]
        proxies = [p for p in ctx["proxies"] if p.ipc == ipc]
        res = validate(
            bundle,
            ctx["pool"],
            proxies,
            space=ctx["space"],
            peers=",".join(names),
            proxy_recipe=recipe,
            proxy_seeds=k,
            budgets=[grads / len(bundle.y_train)] if "early" in names else None,
            ipc=ipc,
            subset_preset=args.preset,
            storage=args.storage,
            out=Path(args.work) / f"ipc{ipc}",
            device=args.device,
            n_resamples=args.resamples,
            truth_table=table,
        )
        s = res.summary[~res.summary.kind.isin(["truth", "noise_ceiling"])].copy()
        auto = zip(labels(proxies), proxies, strict=True)
        named = {label: ctx["names"][p.id] for label, p in auto if p.id in ctx["names"]}
        s["name"] = s.name.replace(named)
        distilled = s["distill_sample_grads"].fillna(0) if "distill_sample_grads" in s else 0
        s["grads_per_candidate"] = (s.cost_sample_grads - distilled) / len(ctx["pool"])
        sc = res.per_arch.set_index("arch_key").rename(columns=named)[s.name.tolist()]
        if k > 1:
            s["name"] = s.name.where(s.kind == "peer:zerocost", s.name + f" x{k}")
            sc.columns = s.name.tolist()
        summaries.append(s)
        scores.append(sc)
    summary = pd.concat(summaries, ignore_index=True)
    summary.insert(0, "budget", f"1/{round(1 / frac)}")
    return summary, pd.concat(scores, axis=1)


def earlier(
    old: pd.DataFrame, out: Path, summary: pd.DataFrame, scores: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """This budget's rows and scores with those of an earlier run (`old` rows, `out`'s scores files) that
    this run did not redo."""
    budget = summary.budget.iloc[0]
    path = out / f"scores_{budget[2:]}.csv"
    if not len(old) or not path.exists():
        return summary, scores
    old = old[(old.budget == budget) & ~old.name.isin(summary.name)]
    old_scores = pd.read_csv(path, index_col=0).rename(columns=lambda c: c.removesuffix(f"@{budget}"))
    old = old[old.name.isin(old_scores.columns)]
    return pd.concat([summary, old], ignore_index=True), pd.concat([scores, old_scores[old.name]], axis=1)


def paired(summary: pd.DataFrame, scores: pd.DataFrame, truth: pd.Series, resamples: int) -> pd.DataFrame:
    """Delta-tau with paired CIs: each distilled proxy against the best cheap peer, and distilled pairs."""
    t = truth.to_numpy()
    proxies = summary[summary.kind == "proxy"].sort_values("tau", ascending=False)
    cheap = summary[summary.kind.str.startswith("peer")].sort_values("tau", ascending=False)
    best = cheap.iloc[0] if len(cheap) else None
    pairs = [(p, best) for _, p in proxies.iterrows()] if best is not None else []
    pairs += [(a, b) for i, (_, a) in enumerate(proxies.iterrows()) for _, b in proxies.iloc[i + 1 :].iterrows()]
    rows = []
    for a, b in pairs:
        d = stats.paired_delta_tau(
            t, scores[a["name"]].to_numpy(), scores[b["name"]].to_numpy(), n_resamples=resamples, seed=0
        )
        rows.append({"budget": a["budget"], "a": a["name"], "b": b["name"], "b_kind": b["kind"], **d})
    return pd.DataFrame(rows)


def amortisation(summary: pd.DataFrame, truth_grads: float) -> pd.DataFrame:
    """Per distilled proxy and budget: cost per candidate amortised over 100 and 1,000 candidates, and the
    break-even number of candidates against full-data training of every candidate."""
    rows = []
    for _, r in summary[summary.kind == "proxy"].iterrows():
        d, g = float(r.get("distill_sample_grads", 0) or 0), float(r.grads_per_candidate)
        rows.append(
            {
                "budget": r.budget,
                "name": r["name"],
                "distill_sample_grads": d,
                "grads_per_candidate": g,
                "per_candidate_at_100": g + d / 100,
                "per_candidate_at_1000": g + d / 1000,
                "break_even_candidates": break_even(g, d, truth_grads),
            }
        )
    return pd.DataFrame(rows)


def verdict(summary: pd.DataFrame, deltas: pd.DataFrame, ceiling: dict) -> str:
    """Per budget: the best option, the best cheap peer, and whether any distilled proxy beats it (paired)."""
    lines = [f"Noise ceiling tau {ceiling['tau']:.2f} [{ceiling['tau_low']:.2f}, {ceiling['tau_high']:.2f}]."]
    for budget, g in summary.groupby("budget", sort=False):
        best = g.sort_values("tau", ascending=False).iloc[0]
        cheap = g[g.kind.str.startswith("peer")].sort_values("tau", ascending=False)
        line = f"- {budget} of a truth training: best {best['name']} tau {best.tau:.2f}"
        line += f" [{best.tau_low:.2f}, {best.tau_high:.2f}]"
        if len(cheap):
            line += f"; best cheap peer {cheap.iloc[0]['name']} ({cheap.iloc[0].tau:.2f})"
        d = deltas[(deltas.budget == budget) & deltas.b_kind.str.startswith("peer")] if len(deltas) else deltas
        wins = [f"{r.a} (Δτ {r.dtau:+.2f} [{r.dtau_low:+.2f}, {r.dtau_high:+.2f}])" for _, r in d.iterrows()]
        beats = [w for w, (_, r) in zip(wins, d.iterrows(), strict=True) if r.dtau_low > 0]
        if wins:
            line += "; distilled against it: " + ", ".join(wins)
            won = "Beats it (paired CI above 0): " + ", ".join(beats) if beats else "No distilled proxy beats it."
            line += ". " + won
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, deltas: pd.DataFrame, ceiling: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    ax.axhspan(ceiling["tau_low"], ceiling["tau_high"], color="grey", alpha=0.2, label="noise ceiling (95% CI)")
    ax.axhline(ceiling["tau"], color="grey", lw=1)
    summary = summary.assign(frac=[1 / float(b.split("/")[1]) for b in summary.budget])
    early = "early stopping (full data)" + summary.seeds.map(lambda k: f" x{k:g}" if k > 1 else "")
    summary["line"] = summary.name.where(summary.kind != "peer:early", early)
    for name, g in summary[summary.kind != "peer:zerocost"].groupby("line"):
        g = g.sort_values("frac")
        style = "-" if g.kind.iloc[0] == "proxy" else "--"
        ax.errorbar(g.frac, g.tau, yerr=[g.tau - g.tau_low, g.tau_high - g.tau], fmt=style + "o", capsize=3, label=name)
    for _, r in summary[summary.kind == "peer:zerocost"].drop_duplicates("name").iterrows():
        ax.axhline(r.tau, ls=":", lw=1, color="black")
        ax.annotate(r["name"], (summary.frac.min(), r.tau), fontsize=7, va="bottom")
    ax.set(xscale="log", xlabel="per-candidate budget (fraction of one truth training)", ylabel="Kendall τ vs truth")
    ax.legend(fontsize=7, loc="lower right")
    if len(deltas):
        vs_peer = deltas[deltas.b_kind.str.startswith("peer")].reset_index(drop=True)
        labels = [f"{r.a} − {r.b}\n@{r.budget}" for _, r in vs_peer.iterrows()]
        y = np.arange(len(vs_peer))
        bx.errorbar(
            vs_peer.dtau, y, xerr=[vs_peer.dtau - vs_peer.dtau_low, vs_peer.dtau_high - vs_peer.dtau], fmt="o"
        )
        bx.axvline(0, color="black", lw=1)
        bx.set_yticks(y, labels, fontsize=7)
        bx.set(xlabel="Δτ (distilled − best cheap peer), paired 95% CI")
    fig.suptitle("Ranking at matched cost")
    fig.tight_layout()
    fig.savefig(out / "tau_vs_budget.png", dpi=120)


def by_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered from the smallest budget up (stable: rows of one budget keep their order)."""
    if not len(df):
        return df
    order = df.budget.map(parse_fraction).sort_values(kind="stable").index
    return df.loc[order].reset_index(drop=True)


def main() -> None:
    ap = _bench.parser(__doc__, out="results/bench_fashion_mnist", work="runs/bench_rank", dataset="fashion_mnist")
    ap.add_argument("--truth", default="results/bench_fashion_mnist/truth.csv")
    ap.add_argument("--check", default="results/bench_fashion_mnist/truth_2x.csv", help="2x-length table ('' skips)")
    ap.add_argument("--proxies", nargs="*", default=[], metavar="DIR[=NAME]", help="NAME: the row's name")
    ap.add_argument("--peers", default="random,herding,early,grad_norm,snip,synflow,naswot,params")
    ap.add_argument("--budgets", default="1/1000,1/300,1/100", help="fractions of one truth training")
    ap.add_argument("--ipcs", default="10", help="ipcs of the proxies and subset peers")
    ap.add_argument("--proxy-recipe", default="proxy", help="base recipe shortened to each budget")
    ap.add_argument("--preset", default="cpu", help="distillation preset of the subset peers")
    ap.add_argument("--score-seeds", default="1", help="seeds averaged per candidate within the budget (list: 1,3)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--storage", default="journal:results/bench_fashion_mnist/scores.journal")
    args = _bench.parse(ap)
    args.ipcs = [int(i) for i in args.ipcs.split(",")]
    args.score_seeds = [int(k) for k in args.score_seeds.split(",")]
    if min(args.score_seeds) < 1:
        raise NasddError(f"--score-seeds takes seed counts of at least 1 such as 1,3, got {args.score_seeds}")
    if args.storage.startswith("journal:"):
        Path(args.storage[len("journal:") :]).parent.mkdir(parents=True, exist_ok=True)

    from nasdd.train import TrainRecipe

    table = TruthTable.load(args.truth)
    bundle = load_dataset(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.check:
        convergence(table, TruthTable.load(args.check), args.resamples).to_csv(out / "convergence.csv", index=False)
    ctx = {
        "bundle": bundle,
        "table": table,
        "space": load_space(table.meta["space"]),
        "pool": table.archs(),
        "proxies": [ProxySet.load(p.partition("=")[0], bundle) for p in args.proxies],
        "proxy_base": TrainRecipe.parse(args.proxy_recipe, TrainRecipe.parse("proxy")),
        "truth_grads": float(np.nanmean(table.frame.filter(like="sample_grads_s").to_numpy(float))),
    }
    ctx["names"] = {p.id: a.partition("=")[2] for p, a in zip(ctx["proxies"], args.proxies, strict=True) if "=" in a}
    truth = table.accuracies().mean(axis=1).loc[[a.key() for a in ctx["pool"]]]
    summaries, deltas = [], []
    fracs = sorted((parse_fraction(b) for b in args.budgets.split(",")), reverse=False)
    zc: tuple[pd.DataFrame, pd.DataFrame] | None = None  # zero-cost rows cost the same at every budget
    old = _bench.read(out / "summary.csv"), _bench.read(out / "paired.csv")  # kept where not redone
    for i, frac in enumerate(fracs):
        runs = [audit_budget(args, ctx, frac, i == 0 and j == 0, k) for j, k in enumerate(args.score_seeds)]
        summary = pd.concat([r[0] for r in runs], ignore_index=True)
        scores = pd.concat([r[1] for r in runs], axis=1)
        if zc is None:
            rows = summary[summary.kind == "peer:zerocost"]
            zc = rows.drop(columns="budget"), scores[rows.name.tolist()]
        elif len(zc[0]):
            summary = pd.concat([summary, zc[0].assign(budget=summary.budget.iloc[0])], ignore_index=True)
            scores = pd.concat([scores, zc[1]], axis=1)
        summary, scores = earlier(old[0], out, summary, scores)
        summaries.append(summary)
        deltas.append(paired(summary, scores, truth, args.resamples))
        scores.add_suffix(f"@{summary.budget.iloc[0]}").to_csv(out / f"scores_{summary.budget.iloc[0][2:]}.csv")
        done = [s.budget.iloc[0] for s in summaries]
        kept = [o[~o.budget.isin(done)] if len(o) else o for o in old]
        all_summary = by_budget(pd.concat([kept[0], *summaries], ignore_index=True))
        all_deltas = by_budget(pd.concat([kept[1], *deltas], ignore_index=True))
        all_summary.to_csv(out / "summary.csv", index=False, float_format="%.4g")
        all_deltas.to_csv(out / "paired.csv", index=False, float_format="%.4g")
        amortisation(all_summary, ctx["truth_grads"]).to_csv(out / "amortised.csv", index=False, float_format="%.4g")
        print(all_summary[[c for c in SHOW if c in all_summary]].to_string(index=False, float_format="%.3f"))
    ceiling = stats.noise_ceiling(table.accuracies().to_numpy(), ks=(), n_resamples=args.resamples)
    plot(all_summary, all_deltas, ceiling, out)
    text = verdict(all_summary, all_deltas, ceiling)
    (out / "verdict.md").write_text(text)
    print(text)
    _bench.record(out)


if __name__ == "__main__":
    main()
