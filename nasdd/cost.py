"""The cost model: what a training costs in sample-gradient evaluations, and the three budgets priced in it.

A sample-gradient is one image's gradient in one step, the machine-independent cost `nasdd.train.fit`
counts (`training_grads`). Three different things are called a budget on the command line; here they
have three names:

- the **search budget** (`SearchBudget`, `nasdd search --budget`, parsed by `parse_grads`): the total
  sample-gradients a whole search may spend. The spend of a study is the recorded cost of its counted
  trials (complete, pruned, failed; a cache hit costs 0), plus every trial still running at its full
  cost (so workers sharing a study never overshoot together), plus a fixed part known from the start:
  the retraining of the top k (`k` trainings of the retrain recipe on the full training split) and, when
  counted, the proxy's distillation (`distill_cost`). A trial starts only when its full cost
  (`trial_cost`: one training of the recipe) fits in what is left, so a study spends at most the search
  budget, and stops less than one trial below it (pruned trials and cache hits cost less, leaving room).
- the **candidate budget** (`nasdd bench --budgets 1/100`, parsed by `parse_fraction`): what training one
  candidate may cost, as a fraction of one truth training. Every proxy and peer is held to the same
  candidate budget (`matched_recipe`: a proxy recipe costing that many sample-gradients within 5%), and
  a distillation is spread over the candidates it serves (`amortised`, `break_even`).
- the **stopping length**: a candidate budget spent on the full data by early stopping, in full-data
  epochs (sample-gradients divided by the training-split size; the `early` peer).

Torch-free: `nasdd search --help` and `nasdd run --help` parse budgets without loading torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from nasdd.errors import NasddError

if TYPE_CHECKING:  # nasdd.train imports torch
    from optuna.trial import FrozenTrial

    from nasdd.train import TrainRecipe

SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9}
_GRADS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([kMG]?)\s*$")
TOLERANCE = 0.05  # a matched recipe costs its candidate budget within 5%


# ------------------------------------------------------------------ the cost model
def training_grads(recipe: TrainRecipe, n: int) -> int:
    """Sample-gradient evaluations of one training of `recipe` on `n` images (as `nasdd.train.fit` counts)."""
    bs = min(recipe.batch_size, n)
    per_epoch = math.ceil(n / bs)
    full, rest = divmod(recipe.total_steps(n), per_epoch)
    return full * n + rest * bs


def trial_cost(recipe: TrainRecipe, n_train: int) -> int:
    """Sample-gradients of one full training of `recipe` on `n_train` images: the price of one trial."""
    return training_grads(recipe, n_train)


def distill_cost(provenance: dict[str, Any]) -> int:
    """The distillation cost a proxy's provenance records (0 for `full` and proxies without one)."""
    return int((provenance.get("cost") or {}).get("sample_grads", 0) or 0)


# ------------------------------------------------------------------ the search budget
def parse_grads(text: str | int) -> int:
    """`648000`, `648k`, `3.2M`, `1.5G` (or an int) -> a positive number of sample-gradient evaluations."""
    if isinstance(text, int) and not isinstance(text, bool):
        value: float = text
    else:
        m = _GRADS.match(str(text))
        if m is None:
            raise NasddError(f"a budget is a number of sample-gradients: 648000, 648k, 3.2M or 1.5G, got {text!r}")
        value = float(m[1]) * 10 ** int(m[2] or 0) * SUFFIXES[m[3]]
    if not value >= 1:
        raise NasddError(f"a budget must be at least 1 sample-gradient, got {text!r}")
    return math.floor(value)


@dataclass(frozen=True)
class SearchBudget:
    """`total` sample-gradients for a search whose trials cost `trial` each in full; `reserve` (retraining)
    and `distill` are spent from the start."""

    total: int
    trial: int
    reserve: int = 0
    distill: int = 0

    def __post_init__(self) -> None:
        if self.total < self.minimum:
            parts = f"one trial ({self.trial:,})"
            parts += f" + retraining the top k ({self.reserve:,})" if self.reserve else ""
            parts += f" + distillation ({self.distill:,})" if self.distill else ""
            raise NasddError(
                f"`budget` {self.total} sample-gradients is less than {parts}; the minimum is {self.minimum}",
                params=("budget",),
            )

    @property
    def minimum(self) -> int:
        return self.trial + self.reserve + self.distill

    def trials_spent(self, held: Iterable[FrozenTrial]) -> int:
        """What the trials holding a place in the study (counted or running: `nasdd.search.workers.holding`)
        cost: finished ones their recorded cost, running ones their full cost."""
        return sum(
            self.trial if t.state == TrialState.RUNNING else int(t.user_attrs.get("sample_grads") or 0) for t in held
        )

    def room(self, held: Iterable[FrozenTrial]) -> int:
        """How many more full trials fit after `held` (the trials holding a place) and the fixed part."""
        left = self.total - self.reserve - self.distill - self.trials_spent(held)
        return max(0, left // self.trial)

    def summary(self, counted: Iterable[FrozenTrial], retrained: int | None = None) -> dict[str, int]:
        """budget.json: the search budget, what the `counted` trials and the retraining spent, what is left."""
        spent = sum(int(t.user_attrs.get("sample_grads") or 0) for t in counted)
        retrain = self.reserve if retrained is None else retrained
        return {
            "budget": self.total,
            "trial_cost": self.trial,
            "spent_trials": spent,
            "retrain_reserved": self.reserve,
            "spent_retrain": retrain,
            "distill_counted": self.distill,
            "spent": spent + retrain + self.distill,
            "left": self.total - spent - retrain - self.distill,
        }


# ------------------------------------------------------------------ the candidate budget
def parse_fraction(text: str) -> float:
    """`1/30`, `0.01` -> a candidate budget: a fraction of one truth training in (0, 1]."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise NasddError(f"a budget is a fraction of one truth training such as 1/30 or 0.01, got {text!r}") from None
    if not 0 < value <= 1:
        raise NasddError(f"a budget must lie in (0, 1] of one truth training, got {text!r}")
    return value


def matched_recipe(base: TrainRecipe, n: int, grads: float) -> TrainRecipe:
    """`base` shortened (or lengthened) to cost `grads` sample-gradients on `n` images, within 5%.

    Steps are chosen for the base batch size; when no step count lands within 5% (a candidate budget of a
    few batches), the batch size is lowered until one does.
    """
    if grads < 1:
        raise NasddError(f"a budget of {grads:g} sample-gradients is less than one sample")
    for bs in range(min(base.batch_size, n), 0, -1):
        recipe = replace(base, batch_size=bs, epochs=0, steps=max(1, round(grads / bs)))
        steps = recipe.steps or 1
        for s in (steps - 1, steps, steps + 1):
            cand = replace(recipe, steps=max(1, s))
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
