"""Matched-cost budgets: every proxy and peer trains each candidate for the same number of sample-gradient
evaluations, given as a fraction of one truth training, and distillation is amortised over a search.

A budget of `G` sample-gradients becomes a proxy recipe (steps, and if needed a batch size, chosen so that
one training on `n` images costs `G` within 5%) or an early-stopping length on the full data.
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

from nasdd.errors import NasddError
from nasdd.train import TrainRecipe

TOLERANCE = 0.05


def parse_fraction(text: str) -> float:
    """`1/30`, `0.01` -> a fraction of one truth training in (0, 1]."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise NasddError(f"a budget is a fraction of one truth training such as 1/30 or 0.01, got {text!r}") from None
    if not 0 < value <= 1:
        raise NasddError(f"a budget must lie in (0, 1] of one truth training, got {text!r}")
    return value


def training_grads(recipe: TrainRecipe, n: int) -> int:
    """Sample-gradient evaluations of one training of `recipe` on `n` images (as `nasdd.train.fit` counts)."""
    bs = min(recipe.batch_size, n)
    per_epoch = math.ceil(n / bs)
    full, rest = divmod(recipe.total_steps(n), per_epoch)
    return full * n + rest * bs


def budget_recipe(base: TrainRecipe, n: int, grads: float) -> TrainRecipe:
    """`base` shortened (or lengthened) to cost `grads` sample-gradients on `n` images, within 5%.

    Steps are chosen for the base batch size; when no step count lands within 5% (a budget of a few
    batches), the batch size is lowered until one does.
    """
    if grads < 1:
        raise NasddError(f"a budget of {grads:g} sample-gradients is less than one sample")
    for bs in range(min(base.batch_size, n), 0, -1):
        recipe = replace(base, batch_size=bs, epochs=0, steps=max(1, round(grads / bs)))
        for steps in (recipe.steps - 1, recipe.steps, recipe.steps + 1):
            cand = replace(recipe, steps=max(1, steps))
            if abs(training_grads(cand, n) - grads) <= TOLERANCE * grads:
                return cand
    raise NasddError(f"no recipe trains {n} images for {grads:g} sample-gradients within {TOLERANCE:.0%}")


def amortised(per_candidate: float, distill: float, candidates: int) -> float:
    """Cost per candidate when a distillation costing `distill` serves `candidates` candidates."""
    return per_candidate + distill / max(candidates, 1)


def break_even(per_candidate: float, distill: float, truth: float) -> float:
    """The number of candidates from which a proxy search (distillation once, then `per_candidate` each)
    costs less than training every candidate on full data (`truth` each); inf if it never does."""
    saving = truth - per_candidate
    if saving <= 0:
        return math.inf
    return math.floor(distill / saving) + 1
