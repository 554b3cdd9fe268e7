"""Benchmark: ranking at matched cost — every proxy and peer held to the same per-candidate budget.

Ground truth comes from a committed truth table (`nasdd truth`); each budget is a fraction of one truth
training in sample-gradients. Distilled proxies and the random/herding subsets train each candidate for
that many sample-gradients (`nasdd.cost.matched_recipe`), early stopping trains on the full
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

from pathlib import Path

import _bench
import pandas as pd

from nasdd.cost import parse_fraction
from nasdd.data import load_dataset
from nasdd.distill import ProxySet
from nasdd.errors import NasddError
from nasdd.validate.matched import (
    SHOW,
    MatchedCost,
    amortisation,
    audit,
    by_budget,
    convergence,
    noise_ceiling,
    plot,
    scores_file,
    truth_grads,
    verdict,
)
from nasdd.validate.table import TruthTable


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

    table = TruthTable.load(args.truth)
    bundle = load_dataset(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.check:
        convergence(table, TruthTable.load(args.check), args.resamples).to_csv(out / "convergence.csv", index=False)
    proxies = [ProxySet.load(p.partition("=")[0], bundle) for p in args.proxies]
    names = {p.id: a.partition("=")[2] for p, a in zip(proxies, args.proxies, strict=True) if "=" in a}
    cfg = MatchedCost(
        storage=args.storage,
        work=Path(args.work),
        peers=tuple(n.strip() for n in args.peers.split(",") if n.strip()),
        ipcs=tuple(args.ipcs),
        proxy_recipe=args.proxy_recipe,
        preset=args.preset,
        device=args.device,
        resamples=args.resamples,
    )
    fracs = [parse_fraction(b) for b in args.budgets.split(",")]
    old = _bench.read(out / "summary.csv"), _bench.read(out / "paired.csv")  # kept where not redone
    summaries, deltas = [], []
    budgets = audit(bundle, table, proxies, fracs, cfg, names=names, seeds=args.score_seeds, old=old[0], folder=out)
    for budget in budgets:
        summaries.append(budget.summary)
        deltas.append(budget.paired)
        budget.scores.add_suffix(f"@{budget.name}").to_csv(scores_file(out, budget.name))
        done = [s.budget.iloc[0] for s in summaries]
        kept = [o[~o.budget.isin(done)] if len(o) else o for o in old]
        all_summary = by_budget(pd.concat([kept[0], *summaries], ignore_index=True))
        all_deltas = by_budget(pd.concat([kept[1], *deltas], ignore_index=True))
        all_summary.to_csv(out / "summary.csv", index=False, float_format="%.4g")
        all_deltas.to_csv(out / "paired.csv", index=False, float_format="%.4g")
        amortisation(all_summary, truth_grads(table)).to_csv(out / "amortised.csv", index=False, float_format="%.4g")
        print(all_summary[[c for c in SHOW if c in all_summary]].to_string(index=False, float_format="%.3f"))
    ceiling = noise_ceiling(table, args.resamples)
    plot(all_summary, all_deltas, ceiling, out / "tau_vs_budget.png")
    text = verdict(all_summary, all_deltas, ceiling)
    (out / "verdict.md").write_text(text)
    print(text)
    _bench.record(out)


if __name__ == "__main__":
    main()
