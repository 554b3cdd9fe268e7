"""`nasdd validate`: the audit from the command line (see `nasdd.validate.audit.validate`)."""

from __future__ import annotations

import argparse

from nasdd.cli import add_data_args, load_data_from_args
from nasdd.cli.pool import add_pool_arguments, pool_from_args
from nasdd.errors import NasddError
from nasdd.layout import RunLayout


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_args(parser)
    parser.add_argument("--space", help="search space name or YAML path (needed with --pool and --study)")
    src = parser.add_mutually_exclusive_group()
    add_pool_arguments(parser, src)
    src.add_argument("--study", help="use the architectures of this Optuna study's completed trials")
    parser.add_argument("--study-storage", help="storage URL of --study (default: --storage)")
    parser.add_argument("--proxies", nargs="*", default=[], metavar="DIR", help="ProxySet folders to audit")
    parser.add_argument(
        "--peers", default="all",
        help="comma-separated peers; 'all' is every cheap peer (see `nasdd list peers`); add stack as 'all,stack'",
    )  # fmt: skip
    parser.add_argument(
        "--stack-members", type=int, default=20, metavar="K",
        help="pool members whose truth fits the stack peer; it is scored on the others (default 20)",
    )  # fmt: skip
    parser.add_argument("--ipc", type=int, default=None, help="ipc of the subset peers (default: the proxies')")
    parser.add_argument("--subset-preset", default=None, help="distillation preset of the subset peers (e.g. cpu)")
    parser.add_argument("--truth-seeds", type=int, default=2, help="ground-truth seeds (default 2)")
    parser.add_argument("--truth-recipe", default=None, help="truth training recipe (default 'full', or the table's)")
    parser.add_argument(
        "--truth-table",
        default=None,
        metavar="CSV",
        help="a truth table from `nasdd truth` used instead of training the truth (pool default: its members)",
    )
    parser.add_argument("--proxy-recipe", default="proxy", help="proxy training recipe (default 'proxy')")
    parser.add_argument("--proxy-seeds", type=int, default=1, help="training seeds per proxy, averaged (default 1)")
    parser.add_argument("--proxy-epochs", type=_ints, default=None, help="sweep of proxy epochs, e.g. 50,300")
    parser.add_argument(
        "--budgets",
        dest="early_epochs",
        metavar="BUDGETS",
        type=_floats,
        default=None,
        help="early-stopping budgets in full-data epochs",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL of the result cache (default: $NASDD_STORAGE, else "
        "sqlite file results.db in --out); journal:FILE for many workers on a shared disk",
    )
    parser.add_argument(
        "--scoring", default=None, metavar="JSON",
        help="a scoring recipe file from `nasdd calibrate`: adds its row (its calibration members are left out)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output folder")


def command(args: argparse.Namespace) -> int:
    from nasdd.distill import ProxySet
    from nasdd.spaces import load_space
    from nasdd.storage import sqlite_url
    from nasdd.utils import ensure_dir
    from nasdd.validate import pool as pools
    from nasdd.validate.audit import validate
    from nasdd.validate.config import AuditConfig
    from nasdd.validate.scoring import ScoringRecipe
    from nasdd.validate.table import TruthTable

    space = load_space(args.space) if args.space else None
    out = ensure_dir(args.out)
    storage = args.storage or sqlite_url(RunLayout(out).results_db)
    table = TruthTable.load(args.truth_table) if args.truth_table else None
    pool = pool_from_args(args, space)
    if pool is None and args.study:
        pool = pools.study_pool(args.study, args.study_storage or storage, space)
    if pool is None and table is not None:
        pool = table.archs()
    if pool is None:
        raise NasddError("give the pool: --pool N, --archs FILE, --study NAME or --truth-table CSV")
    bundle = load_data_from_args(args)
    proxies = [ProxySet.load(p, bundle) for p in args.proxies]
    config = AuditConfig.from_text(
        peers=args.peers,
        truth_seeds=args.truth_seeds,
        truth_recipe=args.truth_recipe,
        proxy_recipe=args.proxy_recipe,
        proxy_seeds=args.proxy_seeds,
        proxy_epochs=args.proxy_epochs,
        early_epochs=args.early_epochs,
        ipc=args.ipc,
        subset_preset=args.subset_preset,
        storage=storage,
        scoring=ScoringRecipe.load(args.scoring) if args.scoring else None,
        n_resamples=args.resamples,
        stack_members=args.stack_members,
    )
    result = validate(bundle, pool, proxies, config, space=space, out=out, device=args.device, truth_table=table)
    cols = ["name", "tau", "tau_low", "tau_high", "rho", "p@5", "regret@1", "speedup_sample_grads"]
    print(result.summary[[c for c in cols if c in result.summary]].to_string(index=False, float_format="%.3f"))
    synthetic = result.summary[result.summary.split == "synthetic_val"]
    for _, row in synthetic.iterrows():
        print(f"{row['name']}: scored on its {row['scored_on']}, not the real val split")
    for _, row in result.summary[result.summary.kind == "peer:stack"].iterrows():
        line = f"stack: fitted on {row['calibration_members']:.0f} members' truth, judged on the other {row['n_archs']}"
        if isinstance(row.get("paired_against"), str):  # the best single row on the calibration members
            lo, hi = row["dtau_low"], row["dtau_high"]
            line += f"; Δτ vs {row['paired_against']} {row['dtau']:+.3f} [{lo:+.3f}, {hi:+.3f}] on them"
        print(line)
    if table is not None:
        used = result.config["truth_table"]
        print(f"truth table {args.truth_table}: {used['members_used']} of {used['pool_requested']} pool members held")
    print(f"wrote {out}/per_arch.csv, summary.csv, config.json")
    return 0
