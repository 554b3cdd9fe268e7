"""Retraining the top candidates on the full data: the usual last step of a proxy search."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import torch

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.errors import NasddError
from nasdd.search.outputs import top_trials
from nasdd.train import TrainRecipe, build_seeded, evaluate, fit
from nasdd.utils import atomic_open, progress, resolve_device


def retrain(
    study: optuna.Study,
    bundle: DatasetBundle,
    k: int,
    recipe: TrainRecipe,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    out: Path | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Retrain the top `k` architectures on the full training split; the winner has the best val accuracy.

    Test accuracy is reported, never used to choose. Results are kept in the study's user attributes,
    so a rerun (or another worker) does not train them again.
    """
    device = resolve_device(device)
    rows = []
    top = top_trials(study, k)
    for rank, t in enumerate(progress(top, desc="retrain", unit="training", disable=not show_progress), 1):
        spec = ArchSpec.from_json(t.user_attrs["arch"])
        key = f"retrain:{spec.key()}:{recipe.key()}:{seed}:{bundle.key}"
        res = study.user_attrs.get(key)
        if res is None:
            res = retrain_one(spec, bundle, recipe, seed=seed, device=device)
            study.set_user_attr(key, res)
        rows.append({"rank": rank, "trial": t.number, "search_value": t.values[0], **res, "arch": spec.to_json()})
    df = pd.DataFrame(rows)
    if len(df):
        ok = df[df["status"] == "ok"]
        df["winner"] = df.index == (ok["val_accuracy"].idxmax() if len(ok) else -1)
    if out is not None:
        with atomic_open(Path(out) / "retrain.csv") as f:
            df.to_csv(f, index=False)
    return df


def retrain_one(spec: ArchSpec, bundle: DatasetBundle, recipe: TrainRecipe, *, seed: int, device: torch.device) -> dict:
    """Train `spec` on the full training split; val and test accuracy and the cost."""
    try:
        model = build_seeded(spec, (bundle.channels, bundle.image_size, bundle.image_size), bundle.num_classes, seed)
        res = fit(
            model,
            bundle.x_train,
            bundle.y_train,
            recipe,
            seed=seed,
            device=device,
            eval_data=(bundle.x_val, bundle.y_val),
        )
    except (RuntimeError, ValueError, NasddError) as exc:
        return {
            "status": "failed",
            "error": str(exc).splitlines()[0][:500],
            "val_accuracy": math.nan,
            "test_accuracy": math.nan,
            "seconds": 0.0,
            "sample_grads": 0,
            "params": 0,
        }
    test_acc = evaluate(model, bundle.x_test, bundle.y_test, device=device)[0] if res.ok else math.nan
    return {
        "status": res.status,
        "error": res.error or "",
        "val_accuracy": res.accuracy,
        "test_accuracy": test_acc,
        "seconds": res.seconds,
        "sample_grads": res.sample_grads,
        "params": res.params,
    }
