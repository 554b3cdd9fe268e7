"""Distribution matching (DM; Zhao & Bilen, WACV 2023).

Each iteration samples a freshly initialised ConvNet (re-initialised in place), augments a real batch of
every class and the synthetic set with the same DSA draw, and minimises the sum over classes of the
squared distance between the mean embeddings (`features`) of real and synthetic images; the images are
updated by SGD (lr 1.0, momentum 0.5 in the paper).

All classes go through one pass for the real batch and one for the synthetic set, in cache-sized chunks on
CPU (`nasdd.distill.chunks`); per-class means are taken with `index_add_` over labels. The original DM
code's loop over classes (the same loss up to float noise) is kept as `reference=True` for tests and the
speed benchmark (`scripts/bench_distill.py --speed`). With `compile_model` (or NASDD_COMPILE=1) the real
images' forward-only pass runs compiled (`nasdd.distill.chunks.with_compiled`; ~1.4x faster on one core).
CPU deviations: one DSA draw per iteration shared by all classes (the paper draws one per class), and the
`cpu` preset uses 64 real images per class instead of 256 and far fewer than the paper's 20,000 iterations.
Cost: real images are forward-only (counted one sample-gradient each), synthetic images forward+backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from nasdd.augment import DEFAULT_STRATEGY, DSA
from nasdd.data import DatasetBundle
from nasdd.distill.base import Distiller, register
from nasdd.distill.chunks import OneShape, chunked, with_compiled
from nasdd.distill.options import Options, unrecorded
from nasdd.models import Classifier, reinit_


def class_means(f: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, D] mean of the rows of `f` [N, D] per class label (one scatter, no loop over classes)."""
    sums = f.new_zeros(num_classes, f.shape[1]).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(f.dtype)
    return sums / counts[:, None]


class RealSampler:
    """Draws `b` random training images of every class at once (class-major), without a loop over classes."""

    def __init__(self, bundle: DatasetBundle, b: int, device: torch.device) -> None:
        idx = bundle.class_indices()
        self.b = min(b, min(len(i) for i in idx))
        width = max(len(i) for i in idx)
        self.table = torch.full((len(idx), width), -1, dtype=torch.long)
        for c, i in enumerate(idx):
            self.table[c, : len(i)] = i
        self.table = self.table.to(device)
        self.x, self.y = bundle.x_train.to(device), bundle.y_train.to(device)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.rand(self.table.shape, device=self.table.device).masked_fill(self.table < 0, -1.0)
        pick = self.table.gather(1, keys.topk(self.b, dim=1).indices).flatten()
        return self.x[pick], self.y[pick]


def matching_net(distiller: Distiller, it: int) -> Classifier:
    """Iteration `it`'s matching network (the distiller's `arch`, or a member of its match space) on the
    distiller's device, parameters frozen (images are what learns), in training mode."""
    net = distiller.network(distiller.matching_arch(it))
    net.requires_grad_(False)
    return net.train()


@dataclass(frozen=True)
class DMOptions(Options):
    """DM's options: real images per class and iteration, the image optimiser's momentum, the DSA strategy;
    `reference`: the original DM code's per-class loop (tests and the speed benchmark); `compile_model`:
    the real images' pass compiled (None: NASDD_COMPILE)."""

    batch_real: int = 256
    momentum: float = 0.5
    dsa_strategy: str = DEFAULT_STRATEGY
    reference: bool = unrecorded(False)
    compile_model: bool | None = unrecorded(None)


@register
class DistributionMatching(Distiller):
    """DM: match per-class mean embeddings of real and synthetic images under random networks."""

    name = "dm"
    family = "distribution matching"
    paper = "Zhao & Bilen, Dataset Condensation with Distribution Matching, WACV 2023"
    note = "one DSA draw per iteration for all classes; cpu preset: 64 real images per class, 400 iterations"
    default_iterations = 20000
    default_lr_img = 1.0
    options_type = DMOptions
    opts: DMOptions
    presets = {
        "quick": {"iterations": 60, "batch_real": 16},
        "cpu": {"iterations": 400, "batch_real": 64},
    }

    def setup(self, bundle: DatasetBundle) -> None:
        self.net = matching_net(self, 0)
        self.dsa = DSA(self.opts.dsa_strategy)
        self.sampler = RealSampler(bundle, int(self.opts.batch_real), self.dev)
        self.opt = torch.optim.SGD([self.images], lr=self.lr_img, momentum=float(self.opts.momentum))
        self.k = bundle.num_classes
        self.compiled_: dict[tuple[int, str], OneShape] = {}

    def step(self, it: int) -> float:
        self.net = matching_net(self, it)
        reinit_(self.net)
        xr, yr = self.sampler()
        seed = int(torch.randint(2**31 - 1, (1,)))
        if self.opts.reference:
            loss = self._reference_loss(xr, yr, seed)
        else:
            with torch.no_grad():
                xa = self.dsa(xr, seed)
                run = partial(chunked, net=self.net, x=xa)
                feats = with_compiled(run, self.net.features, self.net, self.compiled_, self.opts.compile_model)
                real = class_means(feats, yr, self.k)
            syn = class_means(chunked(self.net.features, self.net, self.dsa(self.images, seed)), self.labels, self.k)
            loss = ((real - syn) ** 2).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.count(len(xr) + len(self.images))
        return float(loss.detach())

    def _reference_loss(self, xr: torch.Tensor, yr: torch.Tensor, seed: int) -> torch.Tensor:
        """The original DM code's loop: per class, embed its augmented real batch and synthetic images and add
        the squared distance of their means (one DSA draw per iteration, as in `step`)."""
        loss = self.images.new_zeros(())
        for c in range(self.k):
            with torch.no_grad():
                real = self.net.features(self.dsa(xr[yr == c], seed)).mean(0)
            syn = self.net.features(self.dsa(self.images[self.labels == c], seed)).mean(0)
            loss = loss + ((real - syn) ** 2).sum()
        return loss

    def extra_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
