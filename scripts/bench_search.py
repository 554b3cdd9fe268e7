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
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _bench
import pandas as pd

from nasdd.arch import ArchSpec
from nasdd.data import load_dataset
from nasdd.distill import distill
from nasdd.distill.proxy import ProxySet
from nasdd.search import counted_trials, retrain, search
from nasdd.train import TrainRecipe
from nasdd.utils import write_json


def main() -> None:
    ap = _bench.parser(__doc__, out=None, work="runs/bench_search", device="cpu", threads=1)
    ap.add_argument("--space", default="convnet_cpu")
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--proxy", default=None, help="a distilled proxy folder (default: a random subset at --ipc)")
    ap.add_argument("--proxy-recipe", default="proxy,epochs=12,batch_size=10")
    ap.add_argument("--retrain-top", type=int, default=3, help="retrain each search's top K on the full data")
    ap.add_argument("--skip-dc", action="store_true", help="skip the 300-epoch DC-recipe proxy search")
    args = _bench.parse(ap)
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
        kw = {"trials": args.trials, "sampler": args.sampler, "seed": args.seed, "recipe": recipe, "out": folder}
        study = search(
            args.space, source, bundle, study_name=study_name, device=args.device, show_progress=not args.quiet, **kw
        )
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
