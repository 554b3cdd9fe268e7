"""Shared by the performance-matching methods (dd, kip, krr, frepo): learned soft labels and a narrower
copy of the matching network (with a match space, its members are used as drawn instead).

Learned labels are real-valued targets `y` ([N, K], initialised one-hot). They enter each method's
objective as the targets it regresses on (KRR) or as probabilities `softmax(y / label_temperature)`
(cross-entropy, dd). The ProxySet always stores the probabilities `softmax(y / label_temperature)`,
which the trainer uses as cross-entropy targets; for KRR targets this is a choice (regression targets
are not probabilities), documented in each method and in `nasdd list methods`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nasdd.arch import ArchSpec
from nasdd.distill.base import Distiller
from nasdd.distill.options import Options, positive
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.models import NORMS


@dataclass(frozen=True)
class LabelOptions(Options):
    """Options of the soft-label methods: whether labels learn, their temperature T and learning rate."""

    learn_labels: bool = False
    label_temperature: float = 0.1
    lr_label: float = 0.01

    def check(self) -> None:
        positive(self, "label_temperature")


def with_width(arch: ArchSpec, width: int | None, normalization: str | None = None) -> ArchSpec:
    """`arch` with every ConvNet block `width` wide and the given normalisation (None: unchanged;
    non-ConvNet families are returned as they are)."""
    if arch.family != "convnet":
        return arch
    if width is not None and not (isinstance(width, int) and width >= 1):
        raise NasddError(f"option width must be a positive integer or None, got {width!r}")
    if normalization is not None and normalization not in NORMS:
        raise NasddError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMS)}")
    params = {k: v for k, v in arch.to_dict().items() if k != "family"}
    if width is not None:
        params = {k: v for k, v in params.items() if not k.startswith("width_")} | {"width": width}
    if normalization is not None:
        params["normalization"] = normalization
    return ArchSpec.make("convnet", **params)


class SoftLabels(Distiller):
    """A Distiller with one-hot targets, optionally learned; the proxy stores their softmax."""

    opts: LabelOptions
    inner: ArchSpec  # the narrowed matching network (`with_width`), set by the method's `setup`

    def init_targets(self) -> None:
        """Create `self.targets` (float [N, K], one-hot); learnable labels replace `self.labels` by it."""
        onehot = F.one_hot(self.labels, self.bundle.num_classes).float()
        self.targets = onehot.requires_grad_(bool(self.opts.learn_labels))
        if self.opts.learn_labels:
            self.labels = self.targets

    def label_groups(self) -> list[dict[str, Any]]:
        """The optimiser parameter group for learned labels (empty when labels are fixed)."""
        return [{"params": [self.targets], "lr": self.opts.lr_label}] if self.opts.learn_labels else []

    def inner_archs(self, it: int, k: int = 1) -> list[ArchSpec]:
        """Iteration `it`'s `k` inner networks: the narrowed fixed arch (`self.inner`), or members of the
        match space as drawn (the base's `matching_archs`)."""
        return [self.inner] * k if self.space_ is None else self.matching_archs(it, k)

    def target_probs(self) -> torch.Tensor:
        """The targets as probabilities (what the trainer sees)."""
        return torch.softmax(self.targets / self.opts.label_temperature, dim=1)

    def to_proxy(self) -> ProxySet:
        proxy = super().to_proxy()
        if self.opts.learn_labels:
            proxy.labels = self.target_probs().detach().cpu()
        return proxy
