"""Coreset baselines: real training images chosen per class, no optimisation.

`herding` and `kcenter` select in the embedding space (`features`) of the matching network trained on
the real training set, as the DC paper's baselines do (Zhao et al., ICLR 2021, Sec. 4: a ConvNet trained
on the whole training set extracts the features; Euclidean distance).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from nasdd.data import DatasetBundle
from nasdd.distill.base import Distiller, register, sample_real
from nasdd.distill.options import Options
from nasdd.train import TrainRecipe, build_seeded, fit
from nasdd.utils import stable_hash

_FEATURES: dict[str, tuple[torch.Tensor, int, float]] = {}


@register
class RandomSubset(Distiller):
    """A stratified random subset: `ipc` real images per class."""

    name = "random"
    family = "coreset"
    paper = "stratified random subset (the baseline of every distillation paper)"
    iterative = False
    presets = {"quick": {}, "cpu": {}}

    def select(self, bundle: DatasetBundle, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_real(bundle, self.ipc, gen)


@dataclass(frozen=True)
class FeatureOptions(Options):
    """Herding's and k-center's options: the feature network's training (epochs, lr, batch size)."""

    feature_epochs: int = 10
    feature_lr: float = 0.01
    feature_batch: int = 64


class _FeatureCoreset(Distiller):
    """Shared part of herding and k-center: embed the training set with a network trained on it.

    Cost: the training's sample-gradients plus one forward-only embedding pass per training image
    (counted as one sample-gradient each).
    """

    iterative = False
    options_type = FeatureOptions
    opts: FeatureOptions
    presets = {"quick": {"feature_epochs": 2}, "cpu": {"feature_epochs": 3}}

    def embed(self, bundle: DatasetBundle) -> torch.Tensor:
        """[N, D] features of every training image (cached per process: herding and k-center share them;
        their cost, sample-gradients and seconds, is recorded as if computed)."""
        key = stable_hash([bundle.key, self.arch.to_dict(), self.seed, self.opts.record(), str(self.dev)])
        if key not in _FEATURES:
            _FEATURES.clear()
            before, start = self.sample_grads, time.perf_counter()
            feats = self._embed(bundle)
            _FEATURES[key] = (feats, self.sample_grads - before, time.perf_counter() - start)
            return feats
        feats, cost, seconds = _FEATURES[key]
        self.count(cost)
        self.seconds += seconds
        return feats

    def _embed(self, bundle: DatasetBundle) -> torch.Tensor:
        shape = (bundle.channels, bundle.image_size, bundle.image_size)
        net = build_seeded(self.arch, shape, bundle.num_classes, self.seed).to(self.dev)
        epochs = int(self.opts.feature_epochs)
        if epochs > 0:
            recipe = TrainRecipe(
                epochs=epochs,
                batch_size=int(self.opts.feature_batch),
                lr=float(self.opts.feature_lr),
                schedule="cosine",
            )
            self.count(fit(net, bundle.x_train, bundle.y_train, recipe, seed=self.seed, device=self.dev).sample_grads)
        net.eval()
        with torch.no_grad():
            x = bundle.x_train
            feats = [net.features(x[i : i + 1024].to(self.dev)) for i in range(0, len(x), 1024)]
        self.count(len(bundle.x_train))
        return torch.cat(feats)

    def select(self, bundle: DatasetBundle, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.embed(bundle)
        picks = [idx[self.pick(feats[idx.to(self.dev)]).cpu()] for idx in bundle.class_indices()]
        labels = torch.arange(bundle.num_classes).repeat_interleave(self.ipc)
        return bundle.x_train[torch.cat(picks)], labels

    def pick(self, f: torch.Tensor) -> torch.Tensor:
        """Indices (into the rows of one class's features `f`) of the `ipc` chosen samples, in order."""
        raise NotImplementedError


@register
class Herding(_FeatureCoreset):
    """Herding (Welling, ICML 2009): greedily add the sample that keeps the running mean of the chosen
    features closest to the class mean."""

    name = "herding"
    family = "coreset"
    paper = "Welling, ICML 2009 (herding); as the DC baseline, Zhao et al., ICLR 2021"
    note = "features of the ConvNet trained on the real training set (10 epochs; cpu preset 3)"

    def pick(self, f: torch.Tensor) -> torch.Tensor:
        mu, total = f.mean(0), torch.zeros_like(f[0])
        taken = torch.zeros(len(f), dtype=torch.bool, device=f.device)
        chosen = []
        for k in range(1, self.ipc + 1):
            dist = ((mu - (total + f) / k) ** 2).sum(1).masked_fill(taken, float("inf"))
            i = dist.argmin()
            chosen.append(i)
            taken[i] = True
            total = total + f[i]
        return torch.stack(chosen)


@register
class KCenter(_FeatureCoreset):
    """Greedy k-center (Sener & Savarese, ICLR 2018): start from the sample nearest the class mean, then
    repeatedly add the sample farthest from its nearest chosen centre."""

    name = "kcenter"
    family = "coreset"
    paper = "Sener & Savarese, ICLR 2018 (greedy k-center); as the DC baseline, Zhao et al., ICLR 2021"
    note = "features of the ConvNet trained on the real training set (10 epochs; cpu preset 3)"

    def pick(self, f: torch.Tensor) -> torch.Tensor:
        i = ((f - f.mean(0)) ** 2).sum(1).argmin()
        chosen, nearest = [i], ((f - f[i]) ** 2).sum(1)
        for _ in range(self.ipc - 1):
            i = nearest.argmax()
            chosen.append(i)
            nearest = torch.minimum(nearest, ((f - f[i]) ** 2).sum(1))
        return torch.stack(chosen)
