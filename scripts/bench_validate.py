"""Benchmark: the ranking-fidelity audit on mnist5k with a convnet_cpu pool.

Distils one proxy per method at ipc 10 (cached under --work), then runs `nasdd.validate.validate`
with every peer and writes per_arch.csv, summary.csv and config.json to results/validate_mnist5k/.
Preset (CPU): truth = `full,epochs=2` (SGD, batch 64, cosine), 2 seeds, scored on test; proxies and
coreset peers trained with `proxy,epochs=30` (batch 256, step schedule), 1 seed, scored on val;
early stopping at 0.4 and 0.8 epochs of full data (0.8 matches one proxy training's sample-gradients).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/bench_validate.py --methods random,herding,kcenter

Every training is cached in <work>/results.db: adding a method later trains only that method's candidates.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _bench
import pandas as pd

from nasdd.data import load_dataset
from nasdd.distill import METHODS, ProxySet
from nasdd.pipeline import make_proxies
from nasdd.spaces import load_space
from nasdd.storage import sqlite_url
from nasdd.validate import validate
from nasdd.validate.config import AuditConfig
from nasdd.validate.pool import draw_pool


def main() -> None:
    ap = _bench.parser(__doc__, out="results/validate_mnist5k", work="runs/bench_validate")
    ap.add_argument("--space", default="convnet_cpu")
    ap.add_argument("--pool", type=int, default=24)
    ap.add_argument("--pool-seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS.names()), help="distillation methods for the proxies")
    ap.add_argument("--preset", default="cpu", help="distillation preset where a method has it")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--peers", default="all")
    ap.add_argument("--truth-recipe", default="full,epochs=2")
    ap.add_argument("--truth-seeds", type=int, default=2)
    ap.add_argument("--proxy-recipe", default="proxy,epochs=30")
    ap.add_argument("--proxy-seeds", type=int, default=1)
    ap.add_argument("--budgets", default="0.4,0.8", help="early-stopping budgets in epochs ('' = auto)")
    args = _bench.parse(ap)

    bundle = load_dataset(args.dataset)
    space = load_space(args.space)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    proxies = [ProxySet.load(f, bundle) for _, f in make_proxies(bundle, methods, args.ipc, args.preset, work, None)]
    config = AuditConfig.from_text(
        peers=args.peers,
        truth_seeds=args.truth_seeds,
        truth_recipe=args.truth_recipe,
        proxy_recipe=args.proxy_recipe,
        proxy_seeds=args.proxy_seeds,
        early_epochs=[float(b) for b in args.budgets.split(",") if b] or None,
        ipc=args.ipc,
        subset_preset=args.preset,
        storage=sqlite_url(work / "results.db"),
    )
    pool = draw_pool(space, args.pool, args.pool_seed)
    result = validate(bundle, pool, proxies, config, space=space, out=work / "out", device=args.device)
    results = Path(args.out)
    results.mkdir(parents=True, exist_ok=True)
    for name in ("per_arch.csv", "summary.csv", "config.json"):
        shutil.copyfile(work / "out" / name, results / name)
    _bench.record(results)
    cols = [
        "name",
        "tau",
        "tau_low",
        "tau_high",
        "rho",
        "wtau",
        "p@5",
        "regret@1",
        "cost_sample_grads",
        "speedup_sample_grads",
        "speedup_seconds",
    ]
    with pd.option_context("display.width", 200):
        print(result.summary[cols].to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
