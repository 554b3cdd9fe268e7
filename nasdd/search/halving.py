"""Synchronous successive halving over pre-screened candidates, planned from a budget (no torch, no Optuna).

The protocol of `--strategy prescreen`, apart from training so that it can be tested (and replayed on
recorded learning curves) with an injected scoring function:

- rungs are epochs of the real-data recipe: powers of `eta` below its `epochs`, then `epochs`
  (12 epochs, eta 3: 1, 3, 9, 12); a candidate promoted from one rung to the next continues its training
  and costs only the extra epochs;
- `plan` turns a budget (in epochs of one candidate; the caller converts sample-gradients) into one
  bracket: which rung candidates enter at, how many, and how many continue at each later rung. Entry
  rungs are the *trusted* ones, from 1/eta of the training on (9 and 12 of 12 epochs: early rungs of a
  decaying-lr recipe rank slow starters, e.g. BatchNorm members, low), and the plan takes the trusted
  entry rung that examines the most pre-screened candidates (ties: the later rung). With 10 truth
  trainings that is 11 candidates at 9 epochs, 3 or more of them continued to 12; with 30, 35 at 9.
  Entering at the final rung is plain full training of the pre-screened top k. The budget left after
  the bracket is spent on more promotions to the last rung, so at most one promotion's cost is left.
  A budget that reaches no trusted rung gets one rung, the latest that compares at least two
  candidates (with 6 epochs: 2 candidates for 3 epochs, or 5 for 1), or one candidate at the first rung;
- `next_jobs` says, from the results recorded so far, which trainings the bracket needs now (all of a
  rung before any of the next: synchronous), and `winner` names the best candidate on validation after
  the last rung (ties by pre-screen rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nasdd.errors import NasddError


def ladder(epochs: int, eta: int = 3) -> tuple[int, ...]:
    """Rung epochs: 1, eta, eta^2, ... below `epochs`, then `epochs`."""
    if epochs < 1 or eta < 2:
        raise NasddError(f"successive halving needs a recipe of >= 1 epoch and eta >= 2, got {epochs} and {eta}")
    rungs, r = [], 1
    while r < epochs:
        rungs.append(r)
        r *= eta
    return (*rungs, epochs)


@dataclass(frozen=True)
class Bracket:
    """`sizes[i]` candidates are trained to `rungs[i]` epochs (the first `sizes[0]` of the ranking enter)."""

    rungs: tuple[int, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        ok = len(self.rungs) == len(self.sizes) and all(a < b for a, b in zip(self.rungs, self.rungs[1:], strict=False))
        if not ok or not all(1 <= b <= a for a, b in zip((self.sizes[0], *self.sizes), self.sizes, strict=False)):
            raise NasddError(f"not a bracket: rungs {self.rungs}, sizes {self.sizes}")

    @property
    def cost(self) -> int:
        """Epochs trained in all: each rung's candidates pay only the epochs since the previous rung."""
        starts = (0, *self.rungs[:-1])
        return sum(n * (r - s) for n, r, s in zip(self.sizes, self.rungs, starts, strict=True))

    def describe(self) -> str:
        return ", ".join(f"{n} x {r} ep" for n, r in zip(self.sizes, self.rungs, strict=True))


def _halving(rungs: tuple[int, ...], n: int, eta: int) -> Bracket:
    return Bracket(rungs, tuple(max(1, n // eta**i) for i in range(len(rungs))))


def _widest(rungs: tuple[int, ...], budget: int, eta: int, n_max: int) -> Bracket | None:
    """The bracket over `rungs` with the most entrants that fits `budget` epochs."""
    best = None
    for n in range(1, n_max + 1):
        b = _halving(rungs, n, eta)
        if b.cost > budget:
            break  # the cost grows with n
        best = b
    return best


def _fill(b: Bracket, budget: int) -> Bracket:
    """Spend what the bracket leaves on promotions: more candidates at the last rung, then earlier ones."""
    sizes = list(b.sizes)
    for i in range(len(sizes) - 1, 0, -1):
        step = b.rungs[i] - b.rungs[i - 1]
        while sizes[i] < sizes[i - 1] and Bracket(b.rungs, tuple(sizes)).cost + step <= budget:
            sizes[i] += 1
    return Bracket(b.rungs, tuple(sizes))


def plan(budget: int, epochs: int, *, eta: int = 3, candidates: int) -> Bracket:
    """The bracket for `budget` epochs over `candidates` pre-screened candidates (module doc)."""
    rungs = ladder(epochs, eta)
    if budget < rungs[0] or candidates < 1:
        raise NasddError(
            f"the budget buys {budget} epochs of real-data training, less than one rung ({rungs[0]} epoch of one "
            "candidate); raise `budget`"
            if candidates >= 1
            else "no candidates to pre-screen",
            params=("budget",),
        )
    trusted = [i for i, r in enumerate(rungs) if r * eta >= epochs]
    widest = [_widest(rungs[i:], budget, eta, candidates) for i in reversed(trusted)]
    options = [b for b in widest if b is not None]
    if options:
        return _fill(max(options, key=lambda b: b.sizes[0]), budget)  # max keeps the first (latest) of ties
    for r in reversed(rungs):
        n = min(candidates, budget // r)
        if n >= min(2, candidates) or (r == rungs[0] and n >= 1):
            return Bracket((r,), (n,))
    raise AssertionError("unreachable: the first rung fits")


@dataclass(frozen=True)
class Job:
    """Train candidate `arch` from `start` epochs (its previous rung's checkpoint; 0: from scratch) to `epochs`."""

    arch: str
    start: int
    epochs: int

    @property
    def cost(self) -> int:
        return self.epochs - self.start


Results = Mapping[tuple[str, int], float]  # (arch, rung epochs) -> val accuracy (NaN: failed)


def _value(results: Results, arch: str, rung: int) -> float:
    v = results[(arch, rung)]
    return -math.inf if v is None or math.isnan(v) else v


def _survivors(b: Bracket, ranked: Sequence[str], results: Results) -> tuple[list[str], int]:
    """The candidates of the furthest rung whose predecessors all have results, and that rung's index."""
    order = {a: i for i, a in enumerate(ranked)}
    cands = list(ranked[: b.sizes[0]])
    for i, rung in enumerate(b.rungs):
        if any((a, rung) not in results for a in cands) or i == len(b.rungs) - 1:
            return cands, i
        cands = sorted(cands, key=lambda a: (-_value(results, a, rung), order[a]))[: b.sizes[i + 1]]
    raise AssertionError("unreachable")


def next_jobs(b: Bracket, ranked: Sequence[str], results: Results) -> list[Job]:
    """The trainings the bracket needs now: the missing results of the first unfinished rung ([] when done)."""
    cands, i = _survivors(b, ranked, results)
    start = b.rungs[i - 1] if i else 0
    return [Job(a, start, b.rungs[i]) for a in cands if (a, b.rungs[i]) not in results]


def winner(b: Bracket, ranked: Sequence[str], results: Results) -> str | None:
    """The best candidate on validation after the last rung (ties: pre-screen rank); None before the end."""
    if next_jobs(b, ranked, results):
        return None
    cands, _ = _survivors(b, ranked, results)
    order = {a: i for i, a in enumerate(ranked)}
    return min(cands, key=lambda a: (-_value(results, a, b.rungs[-1]), order[a]))


def simulate(b: Bracket, ranked: Sequence[str], score: Callable[[Job], float]) -> tuple[str, int, dict]:
    """Run the bracket with `score(job)` as the training (the replay of recorded curves, or a test);
    return the winner, the epochs spent and the results."""
    results: dict[tuple[str, int], float] = {}
    spent = 0
    while jobs := next_jobs(b, ranked, results):
        for job in jobs:
            results[(job.arch, job.epochs)] = score(job)
            spent += job.cost
    w = winner(b, ranked, results)
    assert w is not None
    return w, spent, results
