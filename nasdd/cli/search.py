"""`nasdd search`: the search from the command line (see `nasdd.search.study.search`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nasdd.cli import add_data_args, load_data_from_args
from nasdd.errors import NasddError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nasdd.search.samplers import PRUNERS, REPORTS, SAMPLERS  # Optuna's names (imports optuna, not torch)
    from nasdd.search.workers import HEARTBEAT_S

    parser.add_argument("--space", required=True, help="search space: a YAML path or a name in search_spaces/")
    parser.add_argument(
        "--proxy",
        default=None,
        help="a proxy folder (from `nasdd distill`), or `full`; required unless --scoring (which trains on full)",
    )
    parser.add_argument(
        "--scoring",
        default=None,
        metavar="JSON",
        help="a scoring recipe file from `nasdd calibrate`: each candidate is trained on real training images at "
        "the recipe's budget (a fraction of one --retrain-recipe training on the full training split) and its "
        "value is the recipe's score (--proxy full; no --pruner, --recipe or --strategy prescreen)",
    )
    add_data_args(parser)
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="finished trials the study should hold (default 20; with --budget and no --trials, only the budget stops)",
    )
    parser.add_argument(
        "--budget",
        default=None,
        help="total compute in sample-gradients (648000, 648k, 3.2M, 1.5G) for every worker's trials, the "
        "--retrain-top retraining (reserved from the start) and, with --budget-includes-distill, the proxy's "
        "distillation; a trial starts only when its full cost fits (budget.json says what was spent)",
    )
    parser.add_argument(
        "--budget-includes-distill",
        action="store_true",
        help="count the proxy's distillation cost (its provenance) in --budget",
    )
    parser.add_argument("--timeout", type=float, default=None, help="stop starting new trials after S seconds")
    parser.add_argument(
        "--study",
        dest="study_name",  # the SearchConfig field, so that errors naming it show --study
        metavar="STUDY",
        required=True,
        help="study name; the same name and storage resume the search",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: an SQLAlchemy URL (sqlite:///PATH, postgresql://...), journal:PATH or PATH.log "
        "(default: $NASDD_STORAGE, else sqlite in the study folder); `optuna-dashboard URL` opens it",
    )
    parser.add_argument(
        "--strategy",
        default="default",
        help="search strategy (`nasdd list strategies`): default, or prescreen (a cheap --prescreen score of --trials "
        "candidates, default 100 or the whole space, then synchronous successive halving on the full data in "
        "epochs of --retrain-recipe, planned from --budget, which it needs; --sampler random, qmc or grid)",
    )
    parser.add_argument(
        "--prescreen",
        default="snip",
        help="--strategy prescreen: the cheap signal, a zero-cost score (snip, synflow, naswot, grad_norm, params, "
        "flops) or proxy (train on --proxy with --recipe)",
    )
    parser.add_argument(
        "--archs",
        default=None,
        help="--strategy prescreen: pre-screen these architectures (a JSON-lines file) instead of drawing --trials",
    )
    parser.add_argument(
        "--eta", type=int, default=3, help="--strategy prescreen: rung factor (rungs 1, eta, eta^2 ... epochs)"
    )
    parser.add_argument("--sampler", default="tpe", choices=list(SAMPLERS), help="Optuna sampler (default tpe)")
    parser.add_argument(
        "--pruner",
        default="none",
        choices=PRUNERS,
        help=f"prune on intermediate val accuracy: median ({REPORTS} reports per trial), hyperband or sha "
        "(successive halving, reduction factor 3) with rungs in epochs of the training data (from 1 epoch to the "
        f"recipe's; {REPORTS} reports when the recipe counts steps); single objective only: Optuna forbids "
        "pruning in multi-objective studies",
    )
    parser.add_argument(
        "--objective", default="accuracy", help="accuracy (maximised), accuracy,params or accuracy,flops (minimised)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="parallel trials in this process (Optuna n_jobs)")
    parser.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    parser.add_argument("--top", type=int, default=5, help="architectures in top.csv (default 5)")
    parser.add_argument("--recipe", default=None, help="training recipe (default `proxy`, or `full` with --proxy full)")
    parser.add_argument("--retrain-top", type=int, default=0, help="retrain the top K on the full data; name a winner")
    parser.add_argument("--retrain-recipe", default="full", help="recipe for --retrain-top (default full)")
    parser.add_argument("--out", default=None, help="study folder for outputs (default results/<study>)")
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT_S,
        help=f"seconds between heartbeats of a running trial in an RDB storage; a trial silent for twice that "
        f"is failed and redone by another worker (default {HEARTBEAT_S})",
    )


def command(args: argparse.Namespace) -> int:
    import json

    import pandas as pd
    from optuna.trial import TrialState

    from nasdd.arch import ArchSpec
    from nasdd.cost import parse_grads
    from nasdd.search.config import SearchConfig
    from nasdd.search.outputs import top_trials
    from nasdd.search.strategies import check
    from nasdd.search.study import search
    from nasdd.search.workers import counted_trials
    from nasdd.validate.pool import read_archs
    from nasdd.validate.scoring import ScoringRecipe

    check(args.strategy)  # before the data loads
    if args.proxy is None and args.scoring is None:
        raise NasddError("--proxy is required: a proxy folder (from `nasdd distill`) or `full` (or give --scoring)")
    scoring = ScoringRecipe.load(args.scoring) if args.scoring else None
    budget = parse_grads(args.budget) if args.budget is not None else None
    if args.strategy == "prescreen" and budget is None:
        raise NasddError(
            "--strategy prescreen needs --budget (sample-gradients, e.g. 648k): it plans its rungs from it"
        )
    config = SearchConfig.from_text(
        study_name=args.study_name,
        trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        sampler=args.sampler,
        pruner=args.pruner,
        objective=args.objective,
        jobs=args.jobs,
        seed=args.seed,
        top=args.top,
        recipe=args.recipe,
        retrain_top=args.retrain_top,
        retrain_recipe=args.retrain_recipe,
        heartbeat=args.heartbeat,
        threads=args.threads,
        budget=budget,
        budget_includes_distill=args.budget_includes_distill,
        strategy=args.strategy,
        prescreen=args.prescreen,
        eta=args.eta,
        archs=tuple(read_archs(args.archs)) if args.archs else None,
        scoring=scoring,
    )
    study = search(
        args.space, args.proxy or "full", load_data_from_args(args), config, out=args.out, device=args.device,
        show_progress=not args.quiet,
    )  # fmt: skip
    out = Path(args.out or Path("results") / args.study_name)
    if args.strategy == "prescreen":
        return _report_prescreen(out)
    counted = counted_trials(study)
    if counted and all(t.state == TrialState.FAIL for t in counted):
        reason = counted[0].user_attrs.get("fail_reason", "unknown")
        raise NasddError(
            f"every trial failed ({len(counted)}; the first: {reason}); lower the recipe's lr or check the proxy, "
            "then search with a new --study"
        )
    states = pd.Series([t.state.name for t in counted]).value_counts().to_dict()
    print(f"study {args.study_name}: {len(counted)} finished trials {states}; outputs in {out}")
    if (out / "config.json").exists():
        scored_on = json.loads((out / "config.json").read_text())["proxy"].get("scored_on")
        if scored_on:
            print(f"candidates scored on the {scored_on}")
    value = "val" if scoring is None else f"score({scoring.score})"
    if len(study.directions) > 1 and counted:
        by = "val accuracy" if scoring is None else value
        print(f"Pareto front: {len(study.best_trials)} trials (listed first in top.csv, by {by})")
    for t in top_trials(study, 1):
        extra = f" {args.objective.split(',')[1]} {t.values[1]:g}" if len(t.values) > 1 else ""
        print(f"best: trial {t.number} {ArchSpec.from_json(t.user_attrs['arch'])} {value} {t.values[0]:.4f}{extra}")
    if budget is not None and (out / "budget.json").exists():
        b = json.loads((out / "budget.json").read_text())
        print(
            f"budget {b['budget']:,} sample-gradients: trials {b['spent_trials']:,}, "
            f"retraining {b['spent_retrain']:,}, distillation {b['distill_counted']:,}, left {b['left']:,}"
        )
    if args.retrain_top and (out / "retrain.csv").exists():
        df = pd.read_csv(out / "retrain.csv")
        if "winner" in df and df["winner"].any():
            w = df[df["winner"]].iloc[0]
            print(
                f"winner after full-data retraining: {ArchSpec.from_json(w['arch'])} "
                f"val {w['val_accuracy']:.4f} test {w['test_accuracy']:.4f}"
            )
    return 0


def _report_prescreen(out: Path) -> int:
    import json

    w = json.loads((out / "winner.json").read_text())
    b = json.loads((out / "budget.json").read_text())
    test = "" if w["test_accuracy"] is None else f" test {w['test_accuracy']:.4f}"
    print(f"bracket: {w['bracket']}; outputs in {out} (halving.csv, winner.json, budget.json)")
    after = f"val {w['val_accuracy']:.4f} after {w['epochs']} epochs{test}"
    print(f"winner: {w['arch']} (pre-screen rank {w['rank']}) {after}")
    print(f"budget {b['budget']:,} sample-gradients: pre-screen {b['spent_prescreen']:,}, "
          f"halving {b['spent_halving']:,}, left {b['left']:,}")  # fmt: skip
    return 0
