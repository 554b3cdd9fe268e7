"""Real-data learning curves, trained once and extended on demand: the evaluation cache of the
equal-compute search benchmark (`nasdd.search.equal_compute`, `scripts/bench_search.py --budgets`).

A curve is one training of an architecture with the truth recipe on the full training split (seed 0),
its val accuracy after every epoch. A search that needs epoch `e` of a member reads it, or trains the
member from its last checkpoint up to `e` (`nasdd.train.fit(resume=...)` continues the same training
exactly), so every search and every strategy shares the same trainings while each is charged what it
would have trained. Curves are JSON files, one per architecture (committed with the results); the
checkpoints stay under the work folder. A lock per architecture lets several processes share the cache.
Without a checkpoint (another machine, a cleaned work folder) a curve is extended by retraining from the
start, which gives the same numbers.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

import torch

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.train import Monitor, TrainRecipe, build_seeded, evaluate, fit
from nasdd.utils import atomic_open, ensure_dir


class NotRecorded(Exception):
    """A replay-only cache (`train=False`) was asked for an epoch it has not recorded."""


class _Reached(Exception):
    """Raised from the evaluation hook once the wanted epoch is trained."""


class Curves:
    """Val accuracy of `spec` after epoch `e` of the truth recipe, trained on first request."""

    def __init__(
        self, folder: Path, ckpts: Path, bundle: DatasetBundle, recipe: TrainRecipe, seed: int = 0, train: bool = True
    ) -> None:
        self.folder, self.ckpts = ensure_dir(folder), ensure_dir(ckpts)
        self.bundle, self.recipe, self.seed, self.train = bundle, recipe, seed, train

    def _path(self, spec: ArchSpec) -> Path:
        return self.folder / f"{spec.key()}.json"

    def read(self, spec: ArchSpec) -> dict[str, Any]:
        """The recorded curve: `arch`, `val` (one accuracy per epoch trained), `seconds`, and `test` once
        trained to the end."""
        p = self._path(spec)
        return json.loads(p.read_text()) if p.exists() else {"arch": spec.to_json(), "val": [], "seconds": 0.0}

    def val(self, spec: ArchSpec, epoch: int) -> float:
        """Val accuracy after `epoch` (1-based) epochs of the truth recipe."""
        if not 1 <= epoch <= self.recipe.epochs:
            raise ValueError(f"epoch {epoch} outside 1..{self.recipe.epochs}")
        curve = self.read(spec)
        if len(curve["val"]) < epoch and not self.train:
            raise NotRecorded(f"{spec.key()} epoch {epoch}")
        if len(curve["val"]) < epoch:
            with open(self.ckpts / f"{spec.key()}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be training this one
                curve = self.read(spec)
                if len(curve["val"]) < epoch:
                    curve = self._extend(spec, curve, epoch)
        return float(curve["val"][epoch - 1])

    def test(self, spec: ArchSpec) -> float:
        """Test accuracy after the whole recipe (trains it to the end if needed)."""
        self.val(spec, self.recipe.epochs)
        return float(self.read(spec)["test"])

    def _extend(self, spec: ArchSpec, curve: dict[str, Any], epoch: int) -> dict[str, Any]:
        b, ckpt = self.bundle, self.ckpts / f"{spec.key()}.pt"
        model = build_seeded(spec, (b.channels, b.image_size, b.image_size), b.num_classes, self.seed)
        state = torch.load(ckpt, weights_only=True) if ckpt.exists() else None  # plain tensors and values
        if state is None or state["epoch"] != len(curve["val"]):
            state, curve["val"] = None, []  # no usable checkpoint: retrain from the start (same numbers)
        start = time.perf_counter()

        def checkpoint(s: dict[str, Any]) -> None:
            nonlocal state
            state = s

        def record(unit: int, acc: float) -> None:
            curve["val"].append(acc)
            if unit >= epoch:
                raise _Reached

        try:
            res = fit(
                model,
                b.x_train,
                b.y_train,
                self.recipe,
                seed=self.seed,
                device="cpu",
                eval_data=(b.x_val, b.y_val),
                monitor=Monitor(eval_every=1, on_eval=record, on_checkpoint=checkpoint),
                resume=state,
            )
            curve["val"].append(res.accuracy)  # the last epoch's evaluation is the final one
            curve["test"] = evaluate(model, b.x_test, b.y_test, device="cpu")[0]
            state = None
        except _Reached:
            pass
        curve["seconds"] += time.perf_counter() - start
        if state is not None:
            state["epoch"] = len(curve["val"])
            torch.save(state, ckpt)
        with atomic_open(self._path(spec)) as f:
            json.dump(curve, f)
        return curve
