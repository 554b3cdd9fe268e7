"""Evaluate a proxy the way the papers do: train a network on it from scratch, test on real data."""

from __future__ import annotations

import torch

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.distill.proxy import ProxySet
from nasdd.models import DEFAULT_ARCH
from nasdd.train import RECIPES, Monitor, TrainRecipe, TrainResult, train_arch, with_learned_lr


def proxy_recipe(proxy: ProxySet, recipe: TrainRecipe | None = None) -> TrainRecipe:
    """The recipe to train on `proxy`: the learned learning rate replaces the recipe's when present."""
    recipe = recipe or RECIPES["proxy"]
    return with_learned_lr(recipe, proxy.lr)


def train_on_proxy(
    proxy: ProxySet,
    bundle: DatasetBundle,
    *,
    arch: ArchSpec = DEFAULT_ARCH,
    recipe: TrainRecipe | None = None,
    seed: int = 0,
    split: str = "test",
    device: str | torch.device = "auto",
    monitor: Monitor | None = None,
) -> TrainResult:
    """Train `arch` on the proxy only and score it on the real `split` (transformed like the proxy); `monitor`:
    what the training watches (`nasdd.train.Monitor`; default nothing)."""
    x_eval, y_eval = bundle.split(split)
    return train_arch(
        arch,
        *proxy.train_data(),
        proxy_recipe(proxy, recipe),
        num_classes=bundle.num_classes,
        seed=seed,
        device=device,
        eval_data=(proxy.input_transform(x_eval), y_eval),
        monitor=Monitor() if monitor is None else monitor,
    )


def evaluate_proxy(
    proxy: ProxySet,
    bundle: DatasetBundle,
    *,
    arch: ArchSpec = DEFAULT_ARCH,
    recipe: TrainRecipe | None = None,
    seeds: range | list[int] = range(5),
    device: str | torch.device = "auto",
) -> list[TrainResult]:
    """Train `arch` on the proxy once per seed; return each run's result on the test split."""
    return [train_on_proxy(proxy, bundle, arch=arch, recipe=recipe, seed=s, device=device) for s in seeds]
