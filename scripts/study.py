"""The published study: every registered method and peer, several ipc, a sweep of proxy training budgets.

    python scripts/study.py --dataset mnist5k --ipc 1,10 --pool 16 --out results/study_mnist5k
    python scripts/study.py --dataset fashion_mnist --max-per-class 300 --ipc 1,10 --out results/study_fashion_mnist

Distils each method at each ipc with the search space's default member as the matching network (the
`--distill-preset` of each method), audits all proxies and every peer on one pool with
`nasdd.validate.validate` (every training cached in `<work>/results.db`, so reruns only train what is
new), and writes the report (plots, report.md/html) into `--out`; proxies and the cache live in `--work`.
The exact command is recorded in results/README.md (earlier runs saved it as `command.txt`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import _bench

from nasdd.data import load_dataset
from nasdd.distill import METHODS, ProxySet
from nasdd.pipeline import make_proxies
from nasdd.report import write_report
from nasdd.spaces import load_space
from nasdd.storage import sqlite_url
from nasdd.utils import ensure_dir
from nasdd.validate import validate
from nasdd.validate.config import AuditConfig
from nasdd.validate.pool import draw_pool


def main(argv: list[str] | None = None) -> int:
    ap = _bench.parser(__doc__, out=None)
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--max-per-class", type=int, default=None)
    ap.add_argument("--methods", default="all", help="comma list or 'all' registered methods")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--space", default="convnet_cpu")
    ap.add_argument("--pool", type=int, default=16)
    ap.add_argument("--truth-seeds", type=int, default=2)
    ap.add_argument("--truth-recipe", default="full,epochs=2")
    ap.add_argument("--proxy-epochs", default="20,50", help="sweep of proxy training budgets (epochs)")
    ap.add_argument("--peers", default="all")
    ap.add_argument("--distill-preset", default="cpu", help="each method's preset (quick for a fast look)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--work", default=None, help="proxies and the training cache (default runs/<out name>)")
    args = _bench.parse(ap, argv)
    if not args.out:
        ap.error("--out is required (tables, plots and report; committed)")
    out = ensure_dir(args.out)
    work = ensure_dir(args.work or Path("runs") / out.name)
    bundle = load_dataset(args.dataset, root=args.data_root, max_per_class=args.max_per_class)
    space = load_space(args.space)
    methods = METHODS.names() if args.methods == "all" else args.methods.split(",")
    folders = []
    for ipc in (int(i) for i in args.ipc.split(",")):
        print(f"distilling {len(methods)} methods at ipc {ipc}", flush=True)
        made = make_proxies(bundle, methods, ipc, args.distill_preset, work, space.default_arch(), 0, args.device)
        folders += [f for _, f in made]
    proxies = [ProxySet.load(f, bundle) for f in folders]
    config = AuditConfig.from_text(
        peers=args.peers,
        truth_seeds=args.truth_seeds,
        truth_recipe=args.truth_recipe,
        proxy_epochs=[int(e) for e in args.proxy_epochs.split(",")],
        n_resamples=args.resamples,
        storage=sqlite_url(work / "results.db"),
    )
    result = validate(bundle, draw_pool(space, args.pool, 0), proxies, config, space=space, out=out, device=args.device)
    write_report(out, proxy_dirs=folders)
    _bench.record(out, argv)
    cols = ["name", "kind", "tau", "tau_low", "tau_high", "rho", "cost_sample_grads", "speedup_sample_grads"]
    print(result.summary[[c for c in cols if c in result.summary]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
