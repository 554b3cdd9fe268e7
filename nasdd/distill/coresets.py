"""Coreset baselines: real training images chosen per class, no optimisation."""

from __future__ import annotations

import torch

from nasdd.data import DatasetBundle
from nasdd.distill.base import Distiller, register, sample_real


@register
class RandomSubset(Distiller):
    """A stratified random subset: `ipc` real images per class."""

    name = "random"
    family = "coreset"
    paper = "stratified random subset (the baseline of every distillation paper)"
    iterative = False

    def select(self, bundle: DatasetBundle, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_real(bundle, self.ipc, gen)
