"""Searches at equal compute (`bench_search.py --budgets`): what a user would run instead of a proxy search,
each held to the same total budget in sample-gradients (distillation included), on a truth table's pool.

Every strategy is a real Optuna study (ask/tell) over the search space; a suggested architecture is
mapped onto the nearest member of the truth table's pool (fewest differing factors, ties by key), so
every chosen architecture has a converged true accuracy (NAS-Bench style). Strategies:

- `proxy-tpe`: TPE on the distilled proxy's scores (the ranking benchmark's trainings at one budget per
  candidate), then the top k retrained on the full data with the truth recipe; winner by full-data val.
  The distillation is charged; k = floor(0.9 * (budget - distillation) / truth training), the rest
  pays the proxy trials (each member scored once; a repeat is a free cache hit, as in `nasdd search`).
- `subset-tpe`: the same protocol on a random subset of the same size (nothing to distil).
- `hyperband`: TPE on the full data with Optuna's HyperbandPruner, rungs in real-data epochs of the truth
  recipe (min 1 epoch, max the recipe's, reduction factor 3; `nasdd search --pruner hyperband`); winner:
  the best complete trial (or, when none completed, the best at the furthest epoch reached).
- `random-sha`: random sampling on the full data with successive halving (min 1 epoch, factor 3;
  `nasdd search --sampler random --pruner sha`). Optuna's pruners are asynchronous: a rung's first trial
  is never pruned, so with a budget of a few truth trainings the first trials take most of it.
- `zerocost-topk`: a zero-cost score (snip) of every member, then the top k = floor(rest / truth
  training) trained in full.
- `prescreen`: `nasdd search --strategy prescreen`: the zero-cost score of every member, then the
  synchronous successive-halving bracket `nasdd.search.halving.plan` chooses from the rest of the budget,
  over the pre-screened ranking, on the real-data learning curves; winner by val after the last rung.

Full-data trainings are replayed from `_curves.Curves` (one recorded training per member with seed 0,
shared by every strategy and search seed; each search is charged what it would have trained). Search seed
s varies three things (`for_seed`): the sampler's seed (s); the zero-cost scoring seed (s: the score's
batch and initial weights, `scores_by_seed`); and the training seed t = s mod 3 of the truth table:
a training with seed t reads the recorded seed-0 curve shifted by the member's recorded seed-t minus
seed-0 final accuracy, and its regret is measured against the mean of the *other* truth seeds, so no
search is scored on the accuracies it chose with. Regret = best true accuracy in the pool minus the
winner's (test split, mean of the held-out truth seeds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import optuna
import pandas as pd
from optuna.trial import TrialState

from nasdd.arch import ArchSpec
from nasdd.search import halving
from nasdd.search.samplers import make_pruner
from nasdd.spaces import SearchSpace

STRATEGIES = ("proxy-tpe", "subset-tpe", "hyperband", "random-sha", "zerocost-topk", "prescreen")
ZEROCOST = ("zerocost-topk", "prescreen")  # the strategies that score with the zero-cost score
MAX_REPEATS = 200  # consecutive cache hits after which a proxy search has converged


@dataclass
class Ctx:
    """What every search of one benchmark shares."""

    space: SearchSpace
    members: list[ArchSpec]
    curves: object  # _curves.Curves
    truth: pd.Series  # arch key -> mean true test accuracy
    scores: pd.DataFrame  # arch key x score column (proxy, subset, zero-cost)
    epochs: int  # truth recipe epochs
    epoch_grads: int  # sample-gradients of one full-data epoch
    costs: dict  # strategy -> {"column", "per_candidate", "distill"}
    accs: pd.DataFrame | None = None  # arch key x truth seed: test accuracies (the seed model of `for_seed`)
    zerocost_by_seed: pd.DataFrame | None = None  # arch key x scoring seed: the zero-cost score

    @property
    def truth_grads(self) -> int:
        return self.epochs * self.epoch_grads

    @cached_property
    def by_key(self) -> dict[str, ArchSpec]:
        return {m.key(): m for m in self.members}


def projector(space: SearchSpace, members: list[ArchSpec]) -> Callable[[ArchSpec], ArchSpec]:
    """The pool member with the fewest factors differing from a suggested architecture (ties: by key)."""
    factors = space.factors()
    ordered = sorted(members, key=ArchSpec.key)

    def nearest(spec: ArchSpec) -> ArchSpec:
        return min(ordered, key=lambda m: sum(m.get(f) != spec.get(f) for f in factors))

    return nearest


def _study(sampler: str, seed: int, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    s = optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    return optuna.create_study(direction="maximize", sampler=s, pruner=pruner or optuna.pruners.NopPruner())


def retrain_top(ctx: Ctx, ranked: list[ArchSpec], k: int) -> tuple[ArchSpec, int]:
    """Train the top `k` of `ranked` with the truth recipe; the winner has the best full-data val.
    With k = 0 the winner is the first of `ranked`. Returns the winner and the sample-gradients spent."""
    if k == 0:
        return ranked[0], 0
    best = max(ranked[:k], key=lambda m: ctx.curves.val(m, ctx.epochs))
    return best, k * ctx.truth_grads


def proxy_search(ctx: Ctx, strategy: str, budget: int, seed: int) -> dict:
    """TPE on cheap scores (a proxy or a subset), or a zero-cost prescreen, then the top k in full."""
    c = ctx.costs[strategy]
    zerocost = strategy == "zerocost-topk"
    left = budget - c["distill"] - (c["per_candidate"] * len(ctx.members) if zerocost else 0)
    k = max(0, math.floor((1.0 if zerocost else 0.9) * left / ctx.truth_grads))
    trials_budget = left - k * ctx.truth_grads
    score = ctx.scores[c["column"]]
    seen: dict[str, float] = {}
    n_trials = 0
    if zerocost:  # every member scored
        seen = {m.key(): float(score[m.key()]) for m in ctx.members}
        spent_trials = c["per_candidate"] * len(ctx.members)
        n_trials = len(ctx.members)
    else:
        study, nearest, spent_trials, repeats = _study("tpe", seed), projector(ctx.space, ctx.members), 0, 0
        while spent_trials + c["per_candidate"] <= trials_budget and len(seen) < len(ctx.members):
            trial = study.ask()
            key = nearest(ctx.space.suggest(trial)).key()
            n_trials += 1
            if key in seen:
                study.tell(trial, seen[key])
                repeats += 1
                if repeats >= MAX_REPEATS:
                    break
                continue
            repeats = 0
            seen[key] = float(score[key])
            spent_trials += c["per_candidate"]
            study.tell(trial, seen[key])
    if not seen:
        return {"k": k, "trials": 0, "scored": 0, "spent": c["distill"], "winner": None}
    ranked = [ctx.by_key[key] for key in sorted(seen, key=seen.get, reverse=True)]
    winner, retrain_grads = retrain_top(ctx, ranked, min(k, len(ranked)))
    spent = c["distill"] + spent_trials + retrain_grads
    return {"k": k, "trials": n_trials, "scored": len(seen), "spent": spent, "winner": winner}


def multifidelity_search(ctx: Ctx, strategy: str, budget: int, seed: int) -> dict:
    """Hyperband (TPE) or successive halving (random) on the full data, rungs in epochs, until the budget."""
    name, sampler = ("hyperband", "tpe") if strategy == "hyperband" else ("sha", "random")
    study = _study(sampler, seed, make_pruner(name, multi=False, resource=ctx.epochs, every=1))  # as `nasdd search`
    nearest = projector(ctx.space, ctx.members)
    done: dict[str, float] = {}  # members trained to the end in this search (a repeat is a free cache hit)
    reached: dict[str, tuple[int, float]] = {}  # furthest epoch (and its val) of every member trained
    spent = n_trials = repeats = 0
    while spent + ctx.epoch_grads <= budget and repeats < MAX_REPEATS and len(done) < len(ctx.members):
        trial = study.ask()
        spec = nearest(ctx.space.suggest(trial))
        n_trials += 1
        if spec.key() in done:
            study.tell(trial, done[spec.key()])
            repeats += 1
            continue
        repeats, epoch, acc = 0, 0, math.nan
        while epoch < ctx.epochs and spent + ctx.epoch_grads <= budget:
            epoch += 1
            acc = ctx.curves.val(spec, epoch)
            spent += ctx.epoch_grads
            trial.report(acc, epoch)
            if epoch < ctx.epochs and trial.should_prune():
                break
        if epoch > reached.get(spec.key(), (0, 0.0))[0]:
            reached[spec.key()] = (epoch, acc)
        if epoch == ctx.epochs:
            done[spec.key()] = acc
            study.tell(trial, acc)
        else:
            study.tell(trial, state=TrialState.PRUNED)
    if not reached:
        return {"k": 0, "trials": n_trials, "scored": 0, "spent": spent, "winner": None}
    best = max(done, key=done.get) if done else max(reached, key=lambda key: reached[key])
    return {"k": len(done), "trials": n_trials, "scored": len(reached), "spent": spent, "winner": ctx.by_key[best]}


class SeedCurves:
    """The recorded seed-0 curves as a training with seed t would give them: shifted by the member's
    recorded final-accuracy difference between truth seeds t and 0."""

    def __init__(self, curves: object, shift: pd.Series) -> None:
        self.curves, self.shift = curves, shift

    def val(self, spec: ArchSpec, epoch: int) -> float:
        return self.curves.val(spec, epoch) + float(self.shift[spec.key()])


def for_seed(ctx: Ctx, seed: int) -> tuple[Ctx, int]:
    """The context of search seed `seed` (module doc) and its training seed."""
    if ctx.accs is None:
        return ctx, 0
    seeds = list(ctx.accs.columns)
    t = seeds[seed % len(seeds)]
    truth = ctx.accs.drop(columns=[t]).mean(axis=1)
    curves = SeedCurves(ctx.curves, ctx.accs[t] - ctx.accs[seeds[0]])
    scores = ctx.scores
    if ctx.zerocost_by_seed is not None:
        scores = scores.copy()
        col = ctx.zerocost_by_seed.columns[seed % ctx.zerocost_by_seed.shape[1]]
        for s in ZEROCOST:
            if s in ctx.costs:
                scores[ctx.costs[s]["column"]] = ctx.zerocost_by_seed[col]
    return replace(ctx, curves=curves, truth=truth, scores=scores), t


def prescreen_search(ctx: Ctx, strategy: str, budget: int, seed: int) -> dict:
    """`nasdd search --strategy prescreen` replayed: zero-cost scores of every member, then the planned
    synchronous successive-halving bracket over their ranking on the recorded real-data curves."""
    c = ctx.costs[strategy]
    scored = c["per_candidate"] * len(ctx.members)
    epochs = int((budget - c["distill"] - scored) // ctx.epoch_grads)
    score = ctx.scores[c["column"]]
    ranked = sorted((m.key() for m in ctx.members), key=lambda k: -float(score[k]))
    bracket = halving.plan(epochs, ctx.epochs, candidates=len(ranked))
    win, spent, results = halving.simulate(bracket, ranked, lambda j: ctx.curves.val(ctx.by_key[j.arch], j.epochs))
    full = sum(r == ctx.epochs for _, r in results)
    spent_grads = c["distill"] + scored + spent * ctx.epoch_grads
    return {"k": full, "trials": len(results), "scored": len(ranked), "spent": spent_grads,
            "winner": ctx.by_key[win], "plan": bracket.describe()}  # fmt: skip


def run(ctx: Ctx, strategy: str, budget_truths: float, seed: int) -> dict:
    """One search; the row of the results CSV."""
    budget = round(budget_truths * ctx.truth_grads)
    ctx, train_seed = for_seed(ctx, seed)
    fn = {"hyperband": multifidelity_search, "random-sha": multifidelity_search, "prescreen": prescreen_search}
    fn = fn.get(strategy, proxy_search)
    from _curves import NotRecorded

    try:
        r = fn(ctx, strategy, budget, seed)
    except NotRecorded as exc:  # a replay-only run: this search needs a training nobody recorded
        r = {"k": 0, "trials": 0, "scored": 0, "spent": 0, "winner": None, "needs": str(exc)}
    w: ArchSpec | None = r.pop("winner")
    best = float(ctx.truth.max())
    true = float(ctx.truth[w.key()]) if w is not None else math.nan
    return {
        "budget_truths": budget_truths,
        "strategy": strategy,
        "seed": seed,
        "train_seed": train_seed,
        "budget_grads": budget,
        "spent_grads": int(r["spent"]),
        "spent_truths": round(r["spent"] / ctx.truth_grads, 3),
        "distill_grads": int(ctx.costs.get(strategy, {}).get("distill", 0)),
        "trials": r["trials"],
        "candidates_scored": r["scored"],
        "full_trainings": r["k"],
        "winner": str(w) if w is not None else "",
        "winner_key": w.key() if w is not None else "",
        "winner_true_acc": round(true, 4),
        "best_true_acc": round(best, 4),
        "regret": round(best - true, 4),
        "winner_rank": int((ctx.truth > true).sum()) + 1 if w is not None else -1,
        "plan": r.get("plan", ""),
        "needs": r.get("needs", ""),
    }
