"""`nasdd bench`: rank your proxies against a shipped ranking benchmark (see `nasdd.validate.bench`).

Only argparse is imported at the top, so `nasdd bench --help` starts without torch.
"""

from __future__ import annotations

import argparse

BENCHMARK_NAMES = ("fashion_mnist", "mnist5k")  # nasdd.validate.bench.BENCHMARKS (a test keeps them equal)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "proxies",
        nargs="*",
        metavar="PROXY[=NAME]",
        help="ProxySet folders (`nasdd distill`, `nasdd import-proxy`) or files of another codebase, imported on "
        "the fly (see `nasdd import-proxy`); =NAME names the row",
    )
    parser.add_argument(
        "--benchmark",
        default="fashion_mnist",
        help=f"shipped benchmark ({', '.join(BENCHMARK_NAMES)}) or a folder holding truth.csv (default fashion_mnist)",
    )
    parser.add_argument(
        "--budgets",
        default=None,
        help="per-candidate budgets as fractions of one truth training, e.g. 1/1000,1/300,1/100,1/30 "
        "(default: the benchmark's, 1/100 for fashion_mnist)",
    )
    parser.add_argument("--out", default="bench", help="output folder (default bench)")
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL of the trainings (default: sqlite file scores.db in --out); journal:FILE or "
        "postgresql://... for several workers: each training is done once, a rerun resumes",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--leaderboard", default=None, metavar="CSV", help="also write the leaderboard (CSV + PNG)")
    parser.add_argument("--data-root", default="data", help="where torchvision datasets live or download to")
    imp = parser.add_argument_group("importing files of other codebases (as `nasdd import-proxy`)")
    imp.add_argument("--format", default=None, help="dc, mtt, tensors or folder (default: detected)")
    imp.add_argument("--normalization", default=None, help="dataset, none, nasdd, MEAN,STD (default: the format's)")
    imp.add_argument("--method", default="imported", help="the method that made the files (names their rows)")


def _load(text: str, bundle, args: argparse.Namespace, out):  # noqa: ANN001, ANN202 - torch types load lazily
    """A ProxySet folder, or another codebase's files imported and saved under out/imported/."""
    from pathlib import Path

    from nasdd.distill import ProxySet
    from nasdd.distill.importers import import_proxy
    from nasdd.layout import RunLayout

    path = Path(text)
    if RunLayout(path).holds_proxy() or path.name in (RunLayout.PROXY_SIDECAR, RunLayout.PROXY_DATA):
        return ProxySet.load(path, bundle)
    proxy = import_proxy(path, bundle, fmt=args.format, normalization=args.normalization, method=args.method)
    proxy.save(out / "imported" / path.stem)
    return proxy


def command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nasdd.data import load_dataset
    from nasdd.distill import METHODS
    from nasdd.errors import NasddError
    from nasdd.storage import sqlite_url
    from nasdd.utils import atomic_open, ensure_dir
    from nasdd.validate import bench as b
    from nasdd.validate.matched import MatchedCost

    bench = b.load_benchmark(args.benchmark)
    budgets = [t.strip() for t in args.budgets.split(",")] if args.budgets else list(bench.budgets)
    if args.resamples < 0:
        raise NasddError(f"--resamples must be >= 0, got {args.resamples}")
    out = ensure_dir(args.out)
    table = bench.truth()
    bundle = load_dataset(table.meta["dataset"], root=args.data_root) if args.proxies else None
    specs = [p.rpartition("=") if "=" in p else (p, "", "") for p in args.proxies]
    proxies = [_load(path, bundle, args, out) for path, _, _ in specs]
    names = {p.id: name for p, (_, _, name) in zip(proxies, specs, strict=True) if name}
    storage = args.storage or sqlite_url(Path(out) / "scores.db")
    if storage.startswith("journal:"):
        Path(storage[len("journal:") :]).parent.mkdir(parents=True, exist_ok=True)
    cfg = MatchedCost(
        storage=storage,
        work=Path(out) / "work",
        ipcs=tuple(sorted({p.ipc for p in proxies})),
        device=args.device,
        resamples=args.resamples,
    )
    res = b.run(bench, proxies, budgets, cfg, names=names, bundle=bundle)
    for budget, scores in res.scores.items():
        scores.add_suffix(f"@{budget}").to_csv(out / f"scores_{budget[2:]}.csv")
    for name, df in (("summary.csv", res.summary), ("paired.csv", res.paired)):
        with atomic_open(out / name) as f:
            df.to_csv(f, index=False, float_format="%.4g")
    (out / "verdict.md").write_text(res.verdict)
    mine = [n for n in res.summary[res.summary.get("source", "") == "yours"].name.unique()]
    b.plot(res, out / "bench.png", mine, f"nasdd bench {bench.name}: ranking at matched cost")
    if args.leaderboard:
        board = b.leaderboard(bench, res, METHODS.names(), cfg)
        path = Path(args.leaderboard)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            board.to_csv(f, index=False, float_format="%.4g")
        b.plot(res, path.with_suffix(".png"), mine, f"{bench.name} leaderboard: Kendall τ at matched cost")
        print(f"wrote {path} and {path.with_suffix('.png')} ({int((board.status == 'measured').sum())} rows measured)")
    cols = ["budget", "name", "source", "tau", "tau_low", "tau_high", "rho_top10", "p@5", "regret@1"]
    shown = res.summary[res.summary.source == "yours"] if mine else res.summary
    print(shown[[c for c in cols if c in shown]].to_string(index=False, float_format="%.3f"))
    print()
    print(res.verdict)
    print(f"wrote {out}/summary.csv, paired.csv, verdict.md, bench.png")
    return 0
