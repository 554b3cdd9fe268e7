"""Spearman rho over the truth's top-k members, per column of a `bench_rank.py` scores file.

    python scripts/topk_spearman.py --scores results/bench_fashion_mnist/hcdc/scores_30.csv \
        --truth results/bench_fashion_mnist/truth.csv --out results/bench_fashion_mnist/hcdc/topk_30.csv

The truth is the mean test accuracy over the table's seeds (`nasdd.validate.table.TruthTable`); every
score column is a proxy or peer (higher is better); CIs resample the top-k members (95%, percentile).
"""

from __future__ import annotations

import argparse

import _bench  # noqa: F401  (puts this checkout's nasdd first on sys.path)
import pandas as pd

from nasdd.validate.stats import top_spearman_table
from nasdd.validate.table import TruthTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", required=True, help="scores_*.csv of bench_rank.py (arch_key first)")
    ap.add_argument("--truth", required=True, help="the truth table the scores were audited against")
    ap.add_argument("--ks", default="10,20")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    scores = pd.read_csv(args.scores, index_col=0)
    truth = TruthTable.load(args.truth).accuracies().mean(axis=1).reindex(scores.index)
    ks = [int(k) for k in args.ks.split(",")]
    rows = [
        {"name": c, **top_spearman_table(truth.to_numpy(), scores[c].to_numpy(), ks, n_resamples=args.resamples)}
        for c in scores.columns
    ]
    pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.4g")
    print(pd.DataFrame(rows)[["name", *(f"rho_top{k}" for k in ks)]].to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
