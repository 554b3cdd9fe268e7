"""Shared helpers for the distillation tests (digits, cheap evaluation recipe)."""

from __future__ import annotations

import statistics

from nasdd.distill import distill
from nasdd.distill.evaluate import evaluate_proxy
from nasdd.train import TrainRecipe

CHEAP = TrainRecipe(epochs=100)


def mean_accuracy(proxy, bundle, seeds: int = 3) -> float:
    """Mean test accuracy of the default ConvNet trained on `proxy` over `seeds` evaluation seeds."""
    return statistics.mean(r.accuracy for r in evaluate_proxy(proxy, bundle, recipe=CHEAP, seeds=range(seeds)))


def check_proxy(proxy, bundle, ipc: int) -> None:
    """Exactly `ipc` images per class, finite values, the dataset's image shape."""
    assert proxy.images.shape == (ipc * bundle.num_classes, *bundle.x_train.shape[1:])
    assert proxy.images.isfinite().all()
    counts = proxy.hard_labels.bincount(minlength=bundle.num_classes)
    assert counts.tolist() == [ipc] * bundle.num_classes


def random_accuracy(bundle, ipc: int = 1) -> float:
    return mean_accuracy(distill(bundle, "random", ipc, seed=0), bundle)
