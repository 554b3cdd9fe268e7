"""Benchmark: a stacked ranker fitted on another dataset (mnist5k), judged on all 60 Fashion-MNIST members (issue 24).

The few-shot stacks pay k target truth trainings, which puts them past 1/30 of a truth training per candidate.
Here `nasdd.validate.calibrate.StackRanker` (ridge on ranks, alpha 1, as shipped; nothing tuned) is fitted on
the shipped 60-member mnist5k `convnet_cpu_pooled` table instead: its truth, its members' early-stopping val
accuracy at 1/30 of the mnist5k truth (grid configuration 0 of `scores_mnist5k.jsonl`) or the score of the
recipe `nasdd calibrate --source transfer` chose at 1/30 (`bench_transfer.py`), and the architecture factors.
It then ranks every Fashion member from the same score at 1/30 on Fashion (early stopping: 0.4 epoch, the
committed `scores_30.csv`; the calibrated recipe: `transfer_budgets/scores.csv`) and the factors. Zero Fashion
truth trainings; one 1/30 training per candidate (none for factors only); no Fashion member or number is read
before the fit. Variants (all reported): factors only, early stopping + factors, calibrated recipe + factors;
and the calibrated recipe's score alone. Each compared, paired, with early stopping on the same 60 members.
The two tables hold the same 60 architectures: the ranker carries mnist5k's ordering of these factors to
Fashion (for other members of the space it generalises through them).

    python scripts/bench_transfer_stack.py
"""

from __future__ import annotations

import _bench
import numpy as np
import pandas as pd
from bench_calibrate import grid_of

from nasdd.validate import calibrate as cal
from nasdd.validate import stats
from nasdd.validate.table import TruthTable


def main() -> None:
    ap = _bench.parser(__doc__, out="results/bench_fashion_mnist/calibrated/transfer_stack.csv", dataset=None)
    ap.add_argument("--source", default="nasdd/validate/truth_mnist5k_convnet_cpu_pooled_60.csv")
    ap.add_argument("--source-cache", default="results/bench_fashion_mnist/calibrated/scores_mnist5k.jsonl")
    ap.add_argument("--target", default="results/bench_fashion_mnist/truth.csv")
    ap.add_argument("--target-scores", default="results/bench_fashion_mnist/scores_30.csv")
    ap.add_argument("--calibrated", default="results/bench_fashion_mnist/calibrated/transfer_budgets",
                    help="bench_transfer.py's per-member scores of the mnist5k-calibrated recipe at 1/30")  # fmt: skip
    ap.add_argument("--resamples", type=int, default=1000)
    args = _bench.parse(ap)
    src = TruthTable.load(args.source)
    grid = grid_of(args.source_cache, src, src.training_grads(), 1 / 30)
    src_scores = pd.DataFrame({
        "early": grid.scores[grid.key_of(0, False, "val_acc")],
        "calibrated": pd.read_csv(f"{args.calibrated}/source_scores.csv", index_col="arch_key")["transfer@1/30"],
    }).loc[list(src.frame.index)]  # fmt: skip
    src_truth, src_factors = src.accuracies().mean(axis=1), src.frame[list(cal.FACTORS)]
    feats = {"transfer_stack_factors": [], "transfer_stack_early": ["early"],
             "transfer_stack_calibrated": ["calibrated"]}  # the score columns each one reads  # fmt: skip
    rankers = {n: cal.StackRanker().fit("mnist5k", src_scores[c], src_factors, src_truth) for n, c in feats.items()}
    # -- only now the target --
    tgt = TruthTable.load(args.target)
    truth, factors = tgt.accuracies().mean(axis=1), tgt.frame[list(cal.FACTORS)]
    keys = list(truth.index)
    scores = pd.DataFrame({
        "early": pd.read_csv(args.target_scores, index_col="arch_key")["early-0.4ep@1/30"],
        "calibrated": pd.read_csv(f"{args.calibrated}/scores.csv", index_col="arch_key")["transfer@1/30"],
    }).loc[keys]  # fmt: skip
    t, e = truth.loc[keys].to_numpy(float), scores["early"].to_numpy(float)
    rows = [{"option": "early-0.4ep@1/30", **cal.metrics(t, e), "dtau": 0.0, "dtau_low": 0.0, "dtau_high": 0.0,
             "per_candidate": 1 / 30}]
    options = {"transfer_recipe@1/30": (scores["calibrated"].to_numpy(float), ["calibrated"])}
    for name, ranker in rankers.items():
        options[name] = (ranker.predict("fashion_mnist", scores[feats[name]], factors).to_numpy(float), feats[name])
    for name, (s, used) in options.items():
        ci = stats.rank_statistics(t, s, n_resamples=args.resamples)
        pair = stats.paired_delta_tau(t, s, e, n_resamples=args.resamples)
        rows.append({"option": name, **cal.metrics(t, s), "tau_low": ci["tau_low"], "tau_high": ci["tau_high"], **pair,
                     "per_candidate": 1 / 30 if used else 0.0})  # fmt: skip
    ci = stats.rank_statistics(t, e, n_resamples=args.resamples)
    rows[0].update(tau_low=ci["tau_low"], tau_high=ci["tau_high"])
    out = pd.DataFrame(rows).assign(members=len(keys), source_members=len(src_scores), target_trainings=0)
    out.to_csv(args.out, index=False, float_format="%.6g")
    print(out.round(3).to_string(index=False))
    for c in src_scores:
        src_tau = stats.kendall_tau(src_truth.loc[src_scores.index].to_numpy(float), src_scores[c].to_numpy(float))
        print(f"on mnist5k, {c} at 1/30 ranks its truth at tau {src_tau:.3f}")
    _bench.record(args.out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
