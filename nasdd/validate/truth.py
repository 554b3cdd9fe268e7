"""Training a pool on one training set and scoring it, every result cached in the ResultStore.

Ground truth is the special case: the full training split, the truth recipe, several seeds, scored on
the TEST split. Proxies and peers are trained the same way but scored on the real VAL split (the split
a search scores candidates on); the test split is only ever used for ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.train import TrainRecipe, train_arch
from nasdd.validate.store import Job, ResultStore


@dataclass
class Scores:
    """One scorer's results on a pool: `table` is [arch key x seed]; costs are summed over every job."""

    name: str
    kind: str
    table: pd.DataFrame
    seconds: float = 0.0
    sample_grads: int = 0
    failed: int = 0
    info: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    @property
    def mean(self) -> pd.Series:
        """Per-architecture score averaged over seeds (NaN only when every seed failed)."""
        with np.errstate(all="ignore"):
            return self.table.mean(axis=1, skipna=True)


def collect(
    name: str, kind: str, pool: Sequence[ArchSpec], seeds: Sequence[int], split: str, results: dict, value: str
) -> Scores:
    """Arrange store results into a Scores table and total their cost."""
    table = pd.DataFrame(index=[a.key() for a in pool], columns=list(seeds), dtype=float)
    scores = Scores(name, kind, table, results=results)
    for a in pool:
        for s in seeds:
            r = results[Job(a, s, split).key]
            v = r.get(value, math.nan)
            ok = r.get("status", "ok") == "ok" and v is not None and math.isfinite(v)
            table.loc[a.key(), s] = v if ok else math.nan
            scores.failed += not ok
            scores.seconds += float(r.get("seconds", 0.0))
            scores.sample_grads += int(r.get("sample_grads", 0))
    return scores


@dataclass(frozen=True)
class PoolTraining:
    """What one row of an audit trains every pool member on and how it is scored: `data` (identified by
    `source` in the store) with `recipe`, scored on `split`, or on `eval_data` when given (a proxy's synthetic
    validation set; `split` then only names it)."""

    source: str
    data: tuple[torch.Tensor, torch.Tensor]
    recipe: TrainRecipe
    split: str
    name: str = ""
    kind: str = ""
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None


def train_pool(
    store: ResultStore,
    bundle: DatasetBundle,
    pool: Sequence[ArchSpec],
    what: PoolTraining,
    seeds: Sequence[int],
    *,
    device: str | torch.device = "auto",
) -> Scores:
    """Train every pool member as `what` says for each seed and score it; cached jobs are read back, not retrained."""
    eval_data = what.eval_data if what.eval_data is not None else bundle.split(what.split)

    def compute(job: Job) -> tuple[float, dict]:
        r = train_arch(
            job.arch, *what.data, what.recipe, num_classes=bundle.num_classes, seed=job.seed, device=device,
            eval_data=eval_data,
        )  # fmt: skip
        d = r.to_dict()
        d.pop("history", None)
        return (r.accuracy if r.ok else math.nan), d

    name = what.name or what.source
    jobs = [Job(a, s, what.split) for a in pool for s in seeds]
    results = store.run((bundle.key, what.source, what.recipe.key()), jobs, compute, desc=f"train {name}")
    return collect(name, what.kind, pool, seeds, what.split, results, "accuracy")


def ground_truth(
    store: ResultStore,
    bundle: DatasetBundle,
    pool: Sequence[ArchSpec],
    recipe: TrainRecipe,
    seeds: Sequence[int],
    *,
    device: str | torch.device = "auto",
) -> Scores:
    """Full-data training with the truth recipe, one run per seed, scored on the test split."""
    truth = PoolTraining("train", (bundle.x_train, bundle.y_train), recipe, "test", "ground_truth", "truth")
    return train_pool(store, bundle, pool, truth, seeds, device=device)
