"""Searches at equal compute (`scripts/bench_search.py --budgets`): what a user would run instead of a proxy search,
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

Full-data trainings are replayed from `nasdd.validate.curves.Curves` (one recorded training per member with seed 0,
shared by every strategy and search seed; each search is charged what it would have trained). Search seed
s varies three things (`for_seed`): the sampler's seed (s); the zero-cost scoring seed (s: the score's
batch and initial weights, `zerocost_by_seed`); and the training seed t = s mod 3 of the truth table:
a training with seed t reads the recorded seed-0 curve shifted by the member's recorded seed-t minus
seed-0 final accuracy, and its regret is measured against the mean of the *other* truth seeds, so no
search is scored on the accuracies it chose with. Regret = best true accuracy in the pool minus the
winner's (test split, mean of the held-out truth seeds).

The strategies' costs come from the ranking benchmark (`costs_from_rank`: `nasdd.validate.matched`'s
summary at one per-candidate budget); `summarise` and `verdict` report the searches' rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Protocol

import optuna
import pandas as pd
from optuna.trial import TrialState

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.search import halving
from nasdd.search.samplers import make_pruner
from nasdd.spaces import SearchSpace
from nasdd.validate.curves import NotRecorded

STRATEGIES = ("proxy-tpe", "subset-tpe", "hyperband", "random-sha", "zerocost-topk", "prescreen")
ZEROCOST = ("zerocost-topk", "prescreen")  # the strategies that score with the zero-cost score
MAX_REPEATS = 200  # consecutive cache hits after which a proxy search has converged


class Curve(Protocol):
    """Val accuracy of a member after `epoch` epochs of the truth recipe (`nasdd.validate.curves.Curves`)."""

    def val(self, spec: ArchSpec, epoch: int) -> float: ...


@dataclass(frozen=True)
class StrategyCost:
    """What a strategy that scores candidates pays: its score column, sample-gradients per scored candidate,
    and the distillation's sample-gradients (0: nothing distilled)."""

    column: str
    per_candidate: float
    distill: float = 0.0


@dataclass(frozen=True)
class EqualCompute:
    """What every search of one benchmark shares."""

    space: SearchSpace
    members: list[ArchSpec]
    curves: Curve
    truth: pd.Series  # arch key -> mean true test accuracy
    scores: pd.DataFrame  # arch key x score column (proxy, subset, zero-cost)
    epochs: int  # truth recipe epochs
    epoch_grads: int  # sample-gradients of one full-data epoch
    costs: Mapping[str, StrategyCost]  # strategy -> what it pays
    accs: pd.DataFrame | None = None  # arch key x truth seed: test accuracies (the seed model of `for_seed`)
    zerocost_by_seed: pd.DataFrame | None = None  # arch key x scoring seed: the zero-cost score

    @property
    def truth_grads(self) -> int:
        return self.epochs * self.epoch_grads

    @cached_property
    def by_key(self) -> dict[str, ArchSpec]:
        return {m.key(): m for m in self.members}


@dataclass(frozen=True)
class Outcome:
    """One search: candidates trained in full (`k`), trials asked, candidates scored, sample-gradients spent,
    the winner (None: none chosen), the halving plan (`prescreen`) and the epoch a replay lacked."""

    k: int
    trials: int
    scored: int
    spent: float
    winner: ArchSpec | None
    plan: str = ""
    needs: str = ""


def costs_from_rank(summary: pd.DataFrame, budget: str, names: Mapping[str, str]) -> dict[str, StrategyCost]:
    """Each strategy's cost from the ranking benchmark's summary rows at `budget` (`names`: strategy -> the
    row it scores with; its score column is `NAME@budget`)."""
    rows = summary[summary.budget == budget].set_index("name")
    costs = {}
    for strategy, name in names.items():
        row = rows.loc[name]
        distill = row.get("distill_sample_grads", math.nan)
        distill = 0.0 if pd.isna(distill) else float(distill)  # NaN: nothing distilled
        costs[strategy] = StrategyCost(f"{name}@{budget}", row.grads_per_candidate, distill)
    return costs


def zerocost_by_seed(score: str, members: Sequence[ArchSpec], bundle: DatasetBundle, seeds: int) -> pd.DataFrame:
    """The zero-cost score of every member with scoring seeds 0..seeds-1 (batch and initial weights), columns
    `s0`, `s1`, ..."""
    from nasdd.validate.zerocost import zero_cost

    want = [f"s{s}" for s in range(seeds)]
    rows = {m.key(): {c: zero_cost(score, m, bundle, seed=int(c[1:]), device="cpu").score for c in want}
            for m in members}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("arch_key")


def projector(space: SearchSpace, members: Sequence[ArchSpec]) -> Callable[[ArchSpec], ArchSpec]:
    """The pool member with the fewest factors differing from a suggested architecture (ties: by key)."""
    factors = space.factors()
    ordered = sorted(members, key=ArchSpec.key)

    def nearest(spec: ArchSpec) -> ArchSpec:
        return min(ordered, key=lambda m: sum(m.get(f) != spec.get(f) for f in factors))

    return nearest


def _study(sampler: str, seed: int, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """An in-memory study named after its sampler and seed: Optuna's HyperbandPruner assigns a trial's bracket
    from a hash of the study name, so an unnamed (randomly named) study would not repeat run to run."""
    s = optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    pruner = pruner or optuna.pruners.NopPruner()
    name = f"{sampler}-{type(pruner).__name__}-{seed}"
    return optuna.create_study(study_name=name, direction="maximize", sampler=s, pruner=pruner)


def retrain_top(ec: EqualCompute, ranked: list[ArchSpec], k: int) -> tuple[ArchSpec, int]:
    """Train the top `k` of `ranked` with the truth recipe; the winner has the best full-data val.
    With k = 0 the winner is the first of `ranked`. Returns the winner and the sample-gradients spent."""
    if k == 0:
        return ranked[0], 0
    best = max(ranked[:k], key=lambda m: ec.curves.val(m, ec.epochs))
    return best, k * ec.truth_grads


def proxy_search(ec: EqualCompute, strategy: str, budget: int, seed: int) -> Outcome:
    """TPE on cheap scores (a proxy or a subset), or a zero-cost prescreen, then the top k in full."""
    c = ec.costs[strategy]
    zerocost = strategy == "zerocost-topk"
    left = budget - c.distill - (c.per_candidate * len(ec.members) if zerocost else 0)
    k = max(0, math.floor((1.0 if zerocost else 0.9) * left / ec.truth_grads))
    trials_budget = left - k * ec.truth_grads
    score = ec.scores[c.column]
    seen: dict[str, float] = {}
    n_trials = 0
    if zerocost:  # every member scored
        seen = {m.key(): float(score[m.key()]) for m in ec.members}
        spent_trials = c.per_candidate * len(ec.members)
        n_trials = len(ec.members)
    else:
        study, nearest, spent_trials, repeats = _study("tpe", seed), projector(ec.space, ec.members), 0.0, 0
        while spent_trials + c.per_candidate <= trials_budget and len(seen) < len(ec.members):
            trial = study.ask()
            key = nearest(ec.space.suggest(trial)).key()
            n_trials += 1
            if key in seen:
                study.tell(trial, seen[key])
                repeats += 1
                if repeats >= MAX_REPEATS:
                    break
                continue
            repeats = 0
            seen[key] = float(score[key])
            spent_trials += c.per_candidate
            study.tell(trial, seen[key])
    if not seen:
        return Outcome(k, 0, 0, c.distill, None)
    ranked = [ec.by_key[key] for key in sorted(seen, key=lambda key: seen[key], reverse=True)]
    winner, retrain_grads = retrain_top(ec, ranked, min(k, len(ranked)))
    return Outcome(k, n_trials, len(seen), c.distill + spent_trials + retrain_grads, winner)


def multifidelity_search(ec: EqualCompute, strategy: str, budget: int, seed: int) -> Outcome:
    """Hyperband (TPE) or successive halving (random) on the full data, rungs in epochs, until the budget."""
    name, sampler = ("hyperband", "tpe") if strategy == "hyperband" else ("sha", "random")
    study = _study(sampler, seed, make_pruner(name, multi=False, resource=ec.epochs, every=1))  # as `nasdd search`
    nearest = projector(ec.space, ec.members)
    done: dict[str, float] = {}  # members trained to the end in this search (a repeat is a free cache hit)
    reached: dict[str, tuple[int, float]] = {}  # furthest epoch (and its val) of every member trained
    spent = n_trials = repeats = 0
    while spent + ec.epoch_grads <= budget and repeats < MAX_REPEATS and len(done) < len(ec.members):
        trial = study.ask()
        spec = nearest(ec.space.suggest(trial))
        n_trials += 1
        if spec.key() in done:
            study.tell(trial, done[spec.key()])
            repeats += 1
            continue
        repeats, epoch, acc = 0, 0, math.nan
        while epoch < ec.epochs and spent + ec.epoch_grads <= budget:
            epoch += 1
            acc = ec.curves.val(spec, epoch)
            spent += ec.epoch_grads
            trial.report(acc, epoch)
            if epoch < ec.epochs and trial.should_prune():
                break
        if epoch > reached.get(spec.key(), (0, 0.0))[0]:
            reached[spec.key()] = (epoch, acc)
        if epoch == ec.epochs:
            done[spec.key()] = acc
            study.tell(trial, acc)
        else:
            study.tell(trial, state=TrialState.PRUNED)
    if not reached:
        return Outcome(0, n_trials, 0, spent, None)
    best = max(done, key=lambda key: done[key]) if done else max(reached, key=lambda key: reached[key])
    return Outcome(len(done), n_trials, len(reached), spent, ec.by_key[best])


@dataclass(frozen=True)
class SeedCurves:
    """The recorded seed-0 curves as a training with seed t would give them: shifted by the member's
    recorded final-accuracy difference between truth seeds t and 0."""

    curves: Curve
    shift: pd.Series

    def val(self, spec: ArchSpec, epoch: int) -> float:
        return self.curves.val(spec, epoch) + float(self.shift[spec.key()])


def for_seed(ec: EqualCompute, seed: int) -> tuple[EqualCompute, int]:
    """The benchmark as search seed `seed` sees it (module doc), and its training seed."""
    if ec.accs is None:
        return ec, 0
    seeds = list(ec.accs.columns)
    t = seeds[seed % len(seeds)]
    truth = ec.accs.drop(columns=[t]).mean(axis=1)
    curves = SeedCurves(ec.curves, ec.accs[t] - ec.accs[seeds[0]])
    scores = ec.scores
    if ec.zerocost_by_seed is not None:
        scores = scores.copy()
        col = ec.zerocost_by_seed.columns[seed % ec.zerocost_by_seed.shape[1]]
        for s in ZEROCOST:
            if s in ec.costs:
                scores[ec.costs[s].column] = ec.zerocost_by_seed[col]
    return replace(ec, curves=curves, truth=truth, scores=scores), t


def prescreen_search(ec: EqualCompute, strategy: str, budget: int, seed: int) -> Outcome:
    """`nasdd search --strategy prescreen` replayed: zero-cost scores of every member, then the planned
    synchronous successive-halving bracket over their ranking on the recorded real-data curves."""
    c = ec.costs[strategy]
    scored = c.per_candidate * len(ec.members)
    epochs = int((budget - c.distill - scored) // ec.epoch_grads)
    score = ec.scores[c.column]
    ranked = sorted((m.key() for m in ec.members), key=lambda k: -float(score[k]))
    bracket = halving.plan(epochs, ec.epochs, candidates=len(ranked))
    win, spent, results = halving.simulate(bracket, ranked, lambda j: ec.curves.val(ec.by_key[j.arch], j.epochs))
    full = sum(r == ec.epochs for _, r in results)
    spent_grads = c.distill + scored + spent * ec.epoch_grads
    return Outcome(full, len(results), len(ranked), spent_grads, ec.by_key[win], plan=bracket.describe())


SEARCHES: dict[str, Callable[[EqualCompute, str, int, int], Outcome]] = {
    **dict.fromkeys(("proxy-tpe", "subset-tpe", "zerocost-topk"), proxy_search),
    **dict.fromkeys(("hyperband", "random-sha"), multifidelity_search),
    "prescreen": prescreen_search,
}


def run(ec: EqualCompute, strategy: str, budget_truths: float, seed: int) -> dict[str, object]:
    """One search; the row of the results CSV."""
    budget = round(budget_truths * ec.truth_grads)
    ec, train_seed = for_seed(ec, seed)
    try:
        r = SEARCHES[strategy](ec, strategy, budget, seed)
    except NotRecorded as exc:  # a replay-only run: this search needs a training nobody recorded
        r = Outcome(0, 0, 0, 0, None, needs=str(exc))
    w = r.winner
    best = float(ec.truth.max())
    true = float(ec.truth[w.key()]) if w is not None else math.nan
    cost = ec.costs.get(strategy)
    return {
        "budget_truths": budget_truths,
        "strategy": strategy,
        "seed": seed,
        "train_seed": train_seed,
        "budget_grads": budget,
        "spent_grads": int(r.spent),
        "spent_truths": round(r.spent / ec.truth_grads, 3),
        "distill_grads": int(cost.distill if cost else 0),
        "trials": r.trials,
        "candidates_scored": r.scored,
        "full_trainings": r.k,
        "winner": str(w) if w is not None else "",
        "winner_key": w.key() if w is not None else "",
        "winner_true_acc": round(true, 4),
        "best_true_acc": round(best, 4),
        "regret": round(best - true, 4),
        "winner_rank": int((ec.truth > true).sum()) + 1 if w is not None else -1,
        "plan": r.plan,
        "needs": r.needs,
    }


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per budget and strategy: searches, regret mean/std/max and the mean budget spent (in truth trainings),
    over the rows a replay could finish."""
    df = df[df["needs"].isna()] if "needs" in df else df
    exact = df.assign(spent_truths=df.spent_grads / df.budget_grads * df.budget_truths)  # the CSV's is rounded
    g = exact.groupby(["budget_truths", "strategy"])
    return (
        g.agg(
            searches=("seed", "size"),
            regret_mean=("regret", "mean"),
            regret_std=("regret", "std"),
            regret_max=("regret", "max"),
            spent_truths=("spent_truths", "mean"),
        )
        .round(4)
        .reset_index()
    )


def seed_noise(truth_acc: pd.DataFrame) -> float:
    """The truth's seed-to-seed std for its top 10 members, in points."""
    top = truth_acc.loc[truth_acc.mean(axis=1).nlargest(10).index]
    return float(100 * top.std(axis=1, ddof=1).mean())


def verdict(summary: pd.DataFrame, truth_acc: pd.DataFrame, df: pd.DataFrame) -> str:
    """Issue 26's question: does `prescreen` match the best other strategy at every budget (within the truth's
    seed noise), and reach <= 0.1 points from 10 T on? With the truth's own seed noise for scale."""
    noise = seed_noise(truth_acc)
    m = summary.pivot(index="budget_truths", columns="strategy", values="regret_mean") * 100
    sd = summary.pivot(index="budget_truths", columns="strategy", values="regret_std") * 100
    needs = int(df["needs"].notna().sum()) if "needs" in df else 0
    lines = [
        "Replayed from recorded learning curves and score tables (no search here trained anything; see "
        "results/README.md). Regret in test-accuracy points, mean over search seeds (std in brackets; seeds vary "
        f"the sampler, the zero-cost scoring seed and the training seed). The truth's own seed-to-seed std for its "
        f"top 10 members is {noise:.2f} points: regrets closer than that are ties.",
        "",
        (m.round(2).astype(str) + " (" + sd.round(2).astype(str) + ")").to_markdown(),
        "",
    ]
    if needs:
        lines += [f"{needs} searches needed an epoch no curve records and are left out (column `needs`).", ""]
    if "prescreen" in m.columns:
        for b, row in m.iterrows():
            others = row.drop("prescreen").dropna()
            best, mine = others.min(), row["prescreen"]
            ok = mine <= best + noise and (b < 10 or mine <= 0.1)
            goal = f"best other {others.idxmin()} {best:.2f}" + (", goal <= 0.10" if b >= 10 else "")
            lines.append(f"- {b:g} T: prescreen {mine:.2f} against {goal}: {'met' if ok else 'missed'}.")
    return "\n".join(lines) + "\n"
