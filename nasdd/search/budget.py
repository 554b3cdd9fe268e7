"""A search's total compute budget in sample-gradient evaluations (the machine-independent cost of `nasdd.train`).

The spend of a study is the `sample_grads` of its counted trials (complete, pruned, failed; a cache hit
costs 0), plus every trial still running at its full cost (so workers sharing a study never overshoot
together), plus a fixed part known from the start: the retraining of the top k (`k` trainings of the
retrain recipe on the full training split) and, when counted, the proxy's distillation. A trial starts
only when its full cost (one training of the recipe) fits in what is left, so a study spends at most the
budget, and stops less than one trial below it (pruned trials and cache hits cost less, leaving room).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from nasdd.errors import NasddError
from nasdd.search.workers import is_counted

if TYPE_CHECKING:  # nasdd.train imports torch; `nasdd search --help` must start without it
    from nasdd.train import TrainRecipe

SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9}
_GRADS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([kMG]?)\s*$")


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


def trial_cost(recipe: TrainRecipe, n_train: int) -> int:
    """Sample-gradients of one full training of `recipe` on `n_train` images: the price of one trial."""
    from nasdd.validate.budget import training_grads

    return training_grads(recipe, n_train)


def distill_cost(provenance: dict) -> int:
    """The distillation cost a proxy's provenance records (0 for `full` and proxies without one)."""
    return int((provenance.get("cost") or {}).get("sample_grads", 0) or 0)


@dataclass(frozen=True)
class Budget:
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
                f"--budget {self.total} sample-gradients is less than {parts}; the minimum is {self.minimum}"
            )

    @property
    def minimum(self) -> int:
        return self.trial + self.reserve + self.distill

    def trials_spent(self, trials: Iterable[FrozenTrial]) -> int:
        """What `trials` (those holding a place in the study) cost: finished ones their real cost, running
        ones their full cost."""
        return sum(int(t.user_attrs.get("sample_grads") or 0) if is_counted(t) else self.trial for t in trials)

    def room(self, trials: Iterable[FrozenTrial]) -> int:
        """How many more full trials fit after `trials` (those holding a place) and the fixed part."""
        left = self.total - self.reserve - self.distill - self.trials_spent(trials)
        return max(0, left // self.trial)

    def summary(self, trials: Iterable[FrozenTrial], retrained: int | None = None) -> dict:
        """budget.json: the budget, what the finished trials and the retraining spent, what is left."""
        spent = sum(int(t.user_attrs.get("sample_grads") or 0) for t in trials if is_counted(t))
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
