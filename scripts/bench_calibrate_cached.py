"""Benchmark: calibration and stacking on the committed Fashion-MNIST score tables, held out, no new training.

The ranking benchmark's result store (`results/bench_fashion_mnist/scores.journal`, read from a copy) holds for
every trained option (distilled proxies, random/herding subsets, early stopping) at every budget each member's
final val accuracy AND val loss. So, with zero new trainings:

- few-shot calibration of (option, score kind) at 1/30 on k members, judged on the other 60 - k;
- stacked rankers (ridge on ranks) at matched cost: one 1/30 training, three 1/100 trainings, nine 1/300 ones,
  each with the zero-cost scores and the architecture factors, fitted on the k calibration members;
- the distillation question with each option under its own calibrated score kind (val_acc or val_loss).

    PYTHONPATH=. python scripts/bench_calibrate_cached.py --out results/bench_fashion_mnist/calibrated
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from nasdd.validate import calibrate as cal
from nasdd.validate import stats
from nasdd.validate.store import ResultStore
from nasdd.validate.table import TruthTable

ZC = ["grad_norm", "snip", "synflow", "naswot", "params"]
STACKS = {  # name -> (budget, options): each option one training at that budget; costs add up to <= 1/30
    "stack_1x1/30": ("1/30", ["early-0.4ep"]),
    "stack_3x1/100": ("1/100", ["early-0.12ep", "random-ipc10", "herding-ipc10"]),
    "stack_9x1/300": ("1/300", ["early-0.04ep", "random-ipc10", "herding-ipc10", "random-ipc50", "herding-ipc50",
                                "dc-ipc10", "dsa-ipc10", "dm-ipc10", "mtt-ipc10"]),
}  # fmt: skip
DISTILLED = ["dc-ipc10", "dsa-ipc10", "dm-ipc10", "mtt-ipc10"]
SUBSETS = ["random-ipc10", "herding-ipc10"]


def load_columns(summary: pd.DataFrame, journal: str, dataset_key: str, cheap: dict[str, pd.DataFrame]) -> tuple:
    """[member x column] of every single-seed trained option's val accuracy and minus val loss, every budget;
    zero-cost columns from the committed score tables; and a frame of each column's (option, budget, kind)."""
    tmp = Path(tempfile.mkdtemp()) / "scores.journal"
    shutil.copy(journal, tmp)  # the store may mark stale claims: never on the committed file
    store = ResultStore(f"journal:{tmp}")
    cols, axes = {}, {}
    for _, r in summary.iterrows():
        if r.kind == "peer:zerocost" or r.seeds != 1:
            continue
        res = store.results((dataset_key, r.proxy_id if isinstance(r.proxy_id, str) else "train", r.recipe))
        acc = {k.split("|")[0]: v.get("accuracy") for k, v in res.items() if k.endswith("|val|0")}
        loss = {k.split("|")[0]: -v.get("loss", np.nan) for k, v in res.items() if k.endswith("|val|0")}
        for kind, d in (("val_acc", acc), ("val_loss", loss)):
            c = f"{r['name']}@{r.budget}|{kind}"
            cols[c] = pd.Series(d, dtype=float)
            axes[c] = {"option": r["name"], "budget": r.budget, "kind": kind}
    for z in ZC:
        cols[z] = cheap["1/30"][f"{z}@1/30"]
    return pd.DataFrame(cols), pd.DataFrame(axes).T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", default="results/bench_fashion_mnist")
    p.add_argument("--ks", default="5,10,20")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--distill-k", type=int, default=10, help="calibration size of the distillation question")
    p.add_argument("--out", default="results/bench_fashion_mnist/calibrated")
    args = p.parse_args()
    bench, out = Path(args.bench), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = TruthTable.load(bench / "truth.csv")
    truth = table.accuracies().mean(axis=1)
    factors = table.frame[list(cal.FACTORS)]
    summary = pd.read_csv(bench / "summary.csv")
    cheap = {b: pd.read_csv(bench / f"scores_{b.split('/')[1]}.csv", index_col="arch_key") for b in ("1/30",)}
    scores, axes = load_columns(summary, str(bench / "scores.journal"), table.meta["dataset_key"], cheap)
    scores = scores.loc[truth.index]
    keys = list(truth.index)
    t_all = truth.to_numpy()
    base_col = "early-0.4ep@1/30|val_acc"
    ins = [{"column": c, **axes.loc[c].to_dict(), **cal.metrics(t_all, scores[c].to_numpy())} for c in axes.index]
    pd.DataFrame(ins).sort_values(["budget", "tau"], ascending=[True, False]).to_csv(
        out / "cached_insample.csv", index=False
    )
    one30 = axes[(axes.budget == "1/30")]
    distill = summary.set_index(["budget", "name"])["distill_sample_grads"].fillna(0)
    T = float(table.frame["sample_grads_s0"].median())
    rows, dq = [], []
    for k in [int(v) for v in args.ks.split(",")]:
        for i, (cset, ev) in enumerate(cal.splits(keys, k, args.repeats, seed=100 + k)):
            t_ev = truth.loc[ev].to_numpy()
            opts = {"baseline": scores.loc[ev, base_col]}
            pick = cal.calibrate_columns(scores[one30.index], one30[["option", "kind"]], truth, cset,
                                         n_trials=args.trials, seed=i)  # fmt: skip
            opts["fewshot_option_kind@1/30"] = scores.loc[ev, pick]
            for name, (b, options) in STACKS.items():
                feats = [f"{o}@{b}|{kd}" for o in options for kd in ("val_acc", "val_loss")] + ZC
                st = cal.StackRanker(model="ridge", seed=i).fit("fashion", scores.loc[cset, feats], factors, truth)
                opts[name] = st.predict("fashion", scores.loc[ev, feats], factors)
            empty = pd.DataFrame(index=keys)
            fo = cal.StackRanker(model="ridge").fit("fashion", empty.loc[cset], factors, truth)
            opts["factors_only"] = fo.predict("fashion", empty.loc[ev], factors)
            seed = int(np.random.default_rng([k, i]).integers(2**31))
            for name, s in opts.items():
                d = cal.paired_draws(t_ev, s.to_numpy(), opts["baseline"].to_numpy(), 100, np.random.default_rng(seed))
                rows.append({"k": k, "split": i, "option": name, "chosen": pick if "fewshot" in name else "",
                             **cal.metrics(t_ev, s.to_numpy()), "draws": d})  # fmt: skip
            for b in ("1/1000", "1/300", "1/100", "1/30") if k == args.distill_k else ():  # own calibrated kind
                own = {}
                for o in DISTILLED + SUBSETS:
                    sub = axes[(axes.budget == b) & (axes.option == o)]
                    if len(sub) < 2:
                        continue
                    c = max(
                        sub.index,
                        key=lambda c: stats.kendall_tau(truth.loc[cset].to_numpy(), scores.loc[cset, c].to_numpy()),
                    )
                    own[o] = c
                for dname in DISTILLED:
                    for sname in SUBSETS:
                        if dname in own and sname in own:
                            a, bb = scores.loc[ev, own[dname]].to_numpy(), scores.loc[ev, own[sname]].to_numpy()
                            d = cal.paired_draws(t_ev, a, bb, 50, np.random.default_rng(seed))
                            dq.append({"k": k, "split": i, "budget": b, "proxy": dname, "against": sname,
                                       "proxy_kind": own[dname].split("|")[1], "subset_kind": own[sname].split("|")[1],
                                       "dtau": stats.kendall_tau(t_ev, a) - stats.kendall_tau(t_ev, bb),
                                       "draws": d})  # fmt: skip
        print(f"k={k} done", flush=True)
    st = pd.DataFrame(rows)
    st.drop(columns="draws").to_csv(out / "cached_heldout_splits.csv", index=False)
    agg = []
    for (k, o), g in st.groupby(["k", "option"], sort=False):
        base = st[(st.k == k) & (st.option == "baseline")].set_index("split").tau
        d = g.set_index("split").tau - base
        pooled = np.concatenate(list(g.draws))
        if o.startswith("stack_"):
            b, options = STACKS[o]
            per = len(options) * float(Fraction(b)) + sum(distill.get((b, x), 0) for x in options) / args.candidates / T
        else:
            per = 1 / 30 if o != "factors_only" else 0.0
        amort = per + (k / args.candidates if o != "baseline" else 0.0)
        agg.append({"k": k, "option": o, "splits": len(g), "eval_members": 60 - k, "tau": g.tau.mean(),
                    "tau_low": g.tau.quantile(0.025), "tau_high": g.tau.quantile(0.975), "dtau_vs_early": d.mean(),
                    "dtau_low": np.quantile(pooled, 0.025), "dtau_high": np.quantile(pooled, 0.975),
                    "splits_dtau_pos": float((d > 0).mean()), "rho_top10": g.rho_top10.mean(),
                    "rho_top20": g.rho_top20.mean(), "p@5": g["p@5"].mean(), "regret@1": g["regret@1"].mean(),
                    "per_candidate": per, "calibration_trainings": k if o != "baseline" else 0,
                    "amortised_at_1000": amort,
                    "fewshot_choice": g.chosen.mode().iat[0] if "fewshot" in o else ""})  # fmt: skip
    agg = pd.DataFrame(agg)
    agg.to_csv(out / "cached_heldout.csv", index=False)
    print(agg[["k", "option", "tau", "tau_low", "tau_high", "dtau_vs_early", "dtau_low", "dtau_high", "rho_top20",
               "p@5", "amortised_at_1000", "fewshot_choice"]].round(3).to_string())  # fmt: skip
    from bench_calibrate import plot

    plot(agg, out / "cached_heldout.png", "Fashion-MNIST, 60 members, committed score tables (no new training): "
         "held-out tau on 60 - k members (95% range over splits)")  # fmt: skip
    dq = pd.DataFrame(dq)
    dagg = []
    for (k, b, pr, ag), g in dq.groupby(["k", "budget", "proxy", "against"], sort=False):
        pooled = np.concatenate(list(g.draws))
        dagg.append({"k": k, "budget": b, "proxy": pr, "against": ag, "dtau": g.dtau.mean(),
                     "dtau_low": np.quantile(pooled, 0.025), "dtau_high": np.quantile(pooled, 0.975),
                     "proxy_val_loss_share": float((g.proxy_kind == "val_loss").mean()),
                     "subset_val_loss_share": float((g.subset_kind == "val_loss").mean())})  # fmt: skip
    dagg = pd.DataFrame(dagg)
    dagg.to_csv(out / "cached_distill_question.csv", index=False)
    print(dagg[dagg.k == 10].round(3).to_string())


if __name__ == "__main__":
    main()
