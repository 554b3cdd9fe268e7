"""Benchmark: the audit's `stack` peer, held out, through `nasdd validate` itself (issue 24, item 3).

`nasdd.validate.validate` audits the benchmark's truth table with early stopping at `--budgets` full-data epochs
(0.4 of the 12-epoch truth = 1/30 of a truth training per candidate), the zero-cost scores and the `stack` peer
(ridge over those rows' scores plus the architecture factors). For every k in `--members` and `--splits` seeds,
the stack is fitted on k members drawn by that seed (`bootstrap_seed`) and judged on the other 60 - k only; the
trainings are cached in `--work`, so the splits after the first train nothing. Per split: the stack's τ and
top-k metrics on its evaluation members, early stopping's on the same members, and paired bootstrap draws of
their Δτ; aggregated over splits like `bench_calibrate_cached.py` (τ: mean and 95% range over splits; Δτ CI:
pooled paired draws). Cost per candidate: the features' trainings (from the audit's own cost columns) plus
k truth trainings amortised over `--candidates` candidates.

    OMP_NUM_THREADS=1 python scripts/bench_stack.py --threads 1 --quiet
"""

from __future__ import annotations

from pathlib import Path

import _bench
import numpy as np
import pandas as pd

from nasdd.data import load_dataset
from nasdd.spaces import load_space
from nasdd.storage import sqlite_url
from nasdd.validate import calibrate as cal
from nasdd.validate.audit import validate
from nasdd.validate.config import AuditConfig
from nasdd.validate.table import TruthTable

EARLY = "early-0.4ep"


def one_split(table: TruthTable, k: int, seed: int, args, bundle, space) -> tuple[dict, dict, np.ndarray]:  # noqa: ANN001
    config = AuditConfig(
        peers=args.peers, early_epochs=tuple(args.budgets), stack_members=k, bootstrap_seed=seed,
        n_resamples=args.resamples, storage=sqlite_url(f"{args.work}/results.db"),
    )  # fmt: skip
    res = validate(bundle, table.archs(), (), config, space=space, device=args.device, truth_table=table)
    pa = res.per_arch.set_index("arch_key")
    ev = pa.index[pa["stack"].notna()]
    t = pa.loc[ev, "truth_mean"].to_numpy(float)
    stack, early = pa.loc[ev, "stack"].to_numpy(float), pa.loc[ev, EARLY].to_numpy(float)
    row = res.summary.set_index("name").loc["stack"]
    draws = cal.paired_draws(t, stack, early, 100, np.random.default_rng(seed))
    features = res.summary[~res.summary.kind.isin(["truth", "noise_ceiling", "peer:stack"])]
    per_seed = res.summary.set_index("name").loc["ground_truth", "cost_sample_grads"] / res.config["truth_seeds"]
    extra = {"paired_against": row["paired_against"], "per_candidate": features.cost_sample_grads.sum() / per_seed}
    return {**cal.metrics(t, stack), **extra}, cal.metrics(t, early), draws


def main() -> None:
    ap = _bench.parser(__doc__, out="results/bench_fashion_mnist/stack", work="runs/bench_stack",
                       dataset="fashion_mnist")  # fmt: skip
    ap.add_argument("--table", default="results/bench_fashion_mnist/truth.csv")
    ap.add_argument("--space", default="convnet_cpu_pooled")
    ap.add_argument("--peers", default="early,grad_norm,snip,synflow,naswot,params,flops,stack")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.4], help="early stopping, full-data epochs")
    ap.add_argument("--members", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=1000)
    args = _bench.parse(ap)
    table, space = TruthTable.load(args.table), load_space(args.space)
    bundle = load_dataset(args.dataset)
    rows = []
    for k in args.members:
        for seed in range(args.splits):
            stack, early, draws = one_split(table, k, seed, args, bundle, space)
            rows.append({"k": k, "split": seed, "option": "stack", **stack, "draws": draws})
            rows.append({"k": k, "split": seed, "option": EARLY, **early, "draws": np.zeros(1)})
        print(f"k={k}: {args.splits} splits", flush=True)
    st = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st.drop(columns="draws").to_csv(out / "splits.csv", index=False)
    agg = []
    for (k, o), g in st.groupby(["k", "option"], sort=False):
        base = st[(st.k == k) & (st.option == EARLY)].set_index("split").tau
        d = g.set_index("split").tau - base
        pooled = np.concatenate(list(g.draws))
        per = g.per_candidate.mean() if o == "stack" else 1 / 30
        agg.append({"k": k, "option": o, "splits": len(g), "eval_members": len(table.frame) - k, "tau": g.tau.mean(),
                    "tau_low": g.tau.quantile(0.025), "tau_high": g.tau.quantile(0.975), "dtau_vs_early": d.mean(),
                    "dtau_low": np.quantile(pooled, 0.025), "dtau_high": np.quantile(pooled, 0.975),
                    "splits_dtau_pos": float((d > 0).mean()), "rho_top10": g.rho_top10.mean(),
                    "rho_top20": g.rho_top20.mean(), "p@5": g["p@5"].mean(), "regret@1": g["regret@1"].mean(),
                    "per_candidate": per, "amortised": per + (k / args.candidates if o == "stack" else 0.0),
                    "candidates": args.candidates})  # fmt: skip
    agg = pd.DataFrame(agg)
    agg.to_csv(out / "heldout.csv", index=False, float_format="%.6g")
    print(agg.drop(columns=["splits", "candidates"]).round(3).to_string(index=False))
    _bench.record(out / "heldout.csv")


if __name__ == "__main__":
    main()
