"""Gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

Every iteration re-initialises the matching network in place (fresh random weights). Then, `outer_loop`
times: for every class c, the gradient of the cross-entropy on a real batch of class c and on the
synthetic images of class c w.r.t. the network weights are compared with the paper's layer-wise distance
(`layer_distance`); the summed distance updates the images (SGD, momentum 0.5); then the network is
trained on the synthetic set for `inner_loop` epochs (SGD lr 0.01, batch 256, through the one trainer).
`outer_loop`/`inner_loop` default to the paper's values per ipc (1: 1/1, 10: 10/50, 20: 20/25,
30: 30/20, 40: 40/15, 50: 50/10; other ipc take the nearest entry). BatchNorm layers, where the
network has them, use running statistics frozen from a real batch (16 images per class) during matching.
`dsa` applies the same DSA draw to the real and the synthetic batch of a class before the gradients
(one seed per class, siamese) and per-sample DSA when training the network, as the DSA code does.

Speed (one CPU core, `scripts/bench_distill.py --speed`, `results/distill_speed.csv`): per-class gradients
come from plain autograd on the module, one forward/backward per class (in cache-sized chunks on CPU,
`nasdd.distill.chunks`; `create_graph` for the synthetic ones), only for the parameters the distance counts
(1-D parameters count 0); the image gradient is `autograd.grad` w.r.t. the images alone. The previous
torch.func path (`grad` per class for the real batch, `vmap(grad)` over classes for the synthetic one) is
kept as `reference=True` for tests and the benchmark (the same numbers up to float noise). With
`compile_model` (or NASDD_COMPILE=1) the real-gradient pass and the inner training run compiled (the
synthetic side stays eager: compiled graphs do not back-propagate twice). Where an outer iteration's time
goes (mnist5k, ipc 10, cpu preset, eager): real gradients ~55%, synthetic gradients and the backward
through them ~30%, inner training ~15%; it is 2.4 TFLOP, 59% of it convolution backward, and oneDNN's
convolutions already run near the core's peak (~170-200 GFLOP/s), so ~12 s of the ~20 s are convolution
arithmetic that no reordering removes (one backward per class is already the minimum: the per-class
weight gradients are sums over that class's samples only).
Real batches are drawn on the device, without host round trips; the network is re-initialised in place.

Cost counting: one sample-gradient per real image per matching pass, two per synthetic image (its
gradient and the backward through that gradient), one per image of the forward-only BatchNorm
statistics pass, and the trainer's count for the network training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from nasdd.arch import ArchSpec
from nasdd.augment import DEFAULT_STRATEGY, DSA
from nasdd.data import DatasetBundle
from nasdd.distill.base import Distiller, register
from nasdd.distill.chunks import OneShape, chunk_size, with_compiled
from nasdd.distill.options import Options, at_least, positive, unrecorded
from nasdd.models import reinit_
from nasdd.train import TrainRecipe, fit

# the paper's (outer_loop, inner_loop) per images-per-class
PAPER_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
EPS = 1e-6  # as in the DC code's cosine denominator
DIGITS_ARCH = ArchSpec.make(
    "convnet", depth=2, width=128, activation="relu", normalization="instancenorm", pooling="avgpool"
)


def paper_loops(ipc: int) -> tuple[int, int]:
    """The paper's (outer_loop, inner_loop) for `ipc`, or those of the nearest tabulated ipc."""
    return PAPER_LOOPS[min(PAPER_LOOPS, key=lambda k: (abs(k - ipc), k))]


def layer_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """The DC distance of one parameter's gradients, batched over a leading class dimension.

    Inputs are [K, *param_shape]. Conv weights [out, in, h, w] become [out, in*h*w], layer-norm weights
    [C, H, W] become [C, H*W], linear weights [out, in] stay; the distance is the sum over classes and
    output rows of 1 - cosine similarity. One-dimensional parameters (biases, norm scales) count 0,
    as in the DC code.
    """
    if g_real.dim() <= 2:
        return g_real.new_zeros(())
    a, b = g_real.flatten(2), g_syn.flatten(2)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + EPS)
    return (1 - cos).sum()


def gradient_distance(g_real: dict[str, torch.Tensor], g_syn: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of `layer_distance` over all parameters (dicts of class-batched gradients)."""
    return sum((layer_distance(g_real[k], g_syn[k]) for k in g_real), torch.zeros((), device=_device(g_real)))


def _device(d: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(d.values())).device


def siamese_augment(
    dsa: DSA, real: torch.Tensor, syn: torch.Tensor, seeds: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment class by class: real[c] and syn[c] ([K, n, C, H, W]) go through one DSA call with
    seed `seeds[c]`, so both get the identical transform (one draw per class, shared by its batch)."""
    n = real.shape[1]
    both = [dsa(torch.cat([real[c], syn[c]]), s) for c, s in enumerate(seeds)]
    return torch.stack([b[:n] for b in both]), torch.stack([b[n:] for b in both])


@dataclass(frozen=True)
class GMOptions(Options):
    """DC's options; `reference`: the previous torch.func matching path (tests and the speed benchmark);
    `compile_model`: the real-gradient pass and inner training compiled (None: NASDD_COMPILE)."""

    outer_loop: int = 0  # 0: the paper's value for the ipc
    inner_loop: int = 0  # 0: the paper's value for the ipc
    batch_real: int = 256
    batch_train: int = 256
    lr_net: float = 0.01
    momentum_img: float = 0.5
    bn_per_class: int = 16
    reference: bool = unrecorded(False)
    compile_model: bool | None = unrecorded(None)

    def check(self) -> None:
        at_least(self, 0, "outer_loop", "inner_loop")
        at_least(self, 1, "batch_real", "batch_train", "bn_per_class")
        positive(self, "lr_net")
        if not 0 <= self.momentum_img < 1:
            raise ValueError(f"momentum_img must be in [0, 1), got {self.momentum_img!r}")


@dataclass(frozen=True)
class DSAOptions(GMOptions):
    """DSA: DC's options and the augmentation strategy."""

    dsa_strategy: str = DEFAULT_STRATEGY


@register
class GradientMatching(Distiller):
    """DC: per-class gradient matching on freshly initialised networks trained on the synthetic set."""

    name = "dc"
    family = "parameter matching"
    paper = "Zhao, Mopuri & Bilen, Dataset Condensation with Gradient Matching, ICLR 2021"
    note = (
        "paper's loops, distance and rates; BN stats frozen as exact real-batch statistics; "
        "cpu preset: 50 (ipc 1) / 12 (ipc 10) iterations instead of 1000, real batch 64 not 256, inner_loop 2"
    )
    default_iterations = 1000
    default_lr_img = 0.1
    options_type = GMOptions
    opts: GMOptions
    presets = {
        # tests on digits (8x8): a depth-2 matching net, since depth 3 instance-normalises 2x2 maps there
        # and the matched images degrade; smaller image steps for the 8x8 pixels
        "quick": {"iterations": 20, "batch_real": 32, "lr_img": 0.01, "arch": DIGITS_ARCH},
        # benchmark on mnist5k within ~10 CPU minutes: fewer iterations, smaller real batches, 2 inner epochs
        # (ipc 10: 8 iterations before the faster matching path, 12 since: 1.7x at load 6-9, 1.24x at load 3-4)
        "cpu": {"iterations": {1: 50, 10: 12}, "batch_real": 64, "inner_loop": 2},
    }
    augment_strategy: str | None = None  # DSA strategy for `dsa`

    # ------------------------------------------------------------------------------------------ setup
    def setup(self, bundle: DatasetBundle) -> None:
        o, dev = self.opts, self.dev
        outer, inner = paper_loops(self.ipc)
        self.outer_loop, self.inner_loop = o.outer_loop or outer, o.inner_loop or inner
        self.k = bundle.num_classes
        self.compiled_: dict[tuple[int, str], OneShape] = {}
        self.use_net(0)
        # per-class index table [K, M] (padded) to draw real batches on the device
        idx = bundle.class_indices()
        self.class_sizes = torch.tensor([len(i) for i in idx], device=dev)
        table = torch.zeros(self.k, max(len(i) for i in idx), dtype=torch.long)
        for c, i in enumerate(idx):
            table[c, : len(i)] = i
        self.table = table.to(dev)
        self.valid = torch.arange(table.shape[1], device=dev)[None] < self.class_sizes[:, None]
        self.x_train = bundle.x_train.to(dev)
        self.batch_real = min(o.batch_real, min(len(i) for i in idx))
        self.opt = torch.optim.SGD([self.images], lr=self.lr_img, momentum=o.momentum_img)
        self.dsa = DSA(self.augment_strategy) if self.augment_strategy else None
        self.recipe = TrainRecipe(
            epochs=self.inner_loop,
            batch_size=o.batch_train,
            lr=o.lr_net,
            momentum=0.0,
            weight_decay=0.0,
            schedule="constant",
            augment=f"dsa:{self.augment_strategy}" if self.augment_strategy else None,
        )

    def use_net(self, it: int) -> None:
        """Match through iteration `it`'s network (the fixed `arch` or a member of the match space)."""
        self.net = self.network(self.matching_arch(it))
        self.bns = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        # the distance counts only parameters of 2+ dimensions (layer_distance): only their gradients are taken
        self.matched = [(n, p) for n, p in self.net.named_parameters() if p.dim() > 1]

    def _loss(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.net, (params, buffers), (x,)), y)

    def extra_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])

    # ------------------------------------------------------------------------------------------- step
    def real_batch(self, n: int) -> torch.Tensor:
        """`n` random training images of every class, [K, n, C, H, W], drawn without replacement."""
        scores = torch.rand(self.table.shape, device=self.dev).masked_fill(~self.valid, -1.0)
        pick = self.table.gather(1, scores.topk(n, dim=1).indices)
        return self.x_train[pick]

    def _freeze_bn(self) -> None:
        """Set BatchNorm running statistics to those of a real batch and freeze them (eval mode)."""
        if not self.bns:
            return
        x = self.real_batch(min(self.opts.bn_per_class, self.batch_real)).flatten(0, 1)
        momenta = [m.momentum for m in self.bns]
        for m in self.bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass stores exactly this batch's statistics
        self.net.train()
        with torch.no_grad():
            self.net(x)
        for m, mom in zip(self.bns, momenta, strict=True):
            m.momentum = mom
            m.eval()
        self.count(len(x))

    def match_loss(self) -> torch.Tensor:
        """Sum over classes of the layer-wise distance between real and synthetic gradients."""
        k, b, ipc = self.k, self.batch_real, self.ipc
        real = self.real_batch(b)
        syn = self.images.view(k, ipc, *self.images.shape[1:])
        if self.dsa is not None:
            seeds = torch.randint(2**31 - 1, (k,)).tolist()
            real, syn = siamese_augment(self.dsa, real, syn, seeds)
            real = real.detach()  # its augmentation shares a graph with syn; keep the real gradients constant
        self.count(k * b + 2 * k * ipc)
        if self.opts.reference:
            return self._reference_distance(real, syn)
        g_real = self.class_grads_autograd(real, create_graph=False)
        return gradient_distance(g_real, self.class_grads_autograd(syn, create_graph=True))

    def class_grads_autograd(self, x: torch.Tensor, create_graph: bool) -> dict[str, torch.Tensor]:
        """Per-class gradients of the matched weights on x [K, n, ...]: a forward/backward per class (in
        cache-sized chunks on CPU, summed); with `create_graph` they stay differentiable w.r.t. x (eager),
        without it the network may run compiled (`compile_model`, `nasdd.distill.chunks.with_compiled`)."""
        if create_graph:
            return self._class_grads(self.net, x, create_graph)
        run = partial(self._class_grads, x=x, create_graph=False)
        return with_compiled(run, self.net, self.net, self.compiled_, self.opts.compile_model)

    def _class_grads(
        self, fwd: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, create_graph: bool
    ) -> dict[str, torch.Tensor]:
        names, weights = zip(*self.matched, strict=True)
        n, size = x.shape[1], chunk_size(self.net, x[0])
        grads = []
        for c in range(self.k):
            parts = [
                torch.autograd.grad(
                    F.cross_entropy(fwd(xc), torch.full((len(xc),), c, device=self.dev), reduction="sum"),
                    weights,
                    create_graph=create_graph,
                )
                for xc in x[c].split(size)
            ]
            grads.append([sum(g) / n for g in zip(*parts, strict=True)])
        return {name: torch.stack([g[i] for g in grads]) for i, name in enumerate(names)}

    def _reference_distance(self, real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
        """The previous implementation (torch.func): real gradients by `grad` per class, synthetic ones by
        `vmap(grad)` over classes; the same distance up to float noise, kept for tests and the benchmark."""
        k, ipc = syn.shape[:2]
        classes = torch.arange(k, device=self.dev)[:, None]
        params = {n: p.detach() for n, p in self.net.named_parameters()}
        buffers = dict(self.net.named_buffers())
        one = grad(self._loss)
        y = torch.zeros(real.shape[1], dtype=torch.long, device=self.dev)
        grads = [one(params, buffers, real[c], y + c) for c in range(self.k)]
        g_real = {n: torch.stack([g[n] for g in grads]).detach() for n in params}
        g_syn = vmap(grad(self._loss), in_dims=(None, None, 0, 0))(params, buffers, syn, classes.expand(k, ipc))
        return gradient_distance(g_real, g_syn)

    def _train_net(self) -> None:
        seed = int(torch.randint(2**31 - 1, (1,)))
        res = fit(
            self.net, self.images.detach(), self.labels, self.recipe, seed=seed, device=self.dev,
            compile_model=self.opts.compile_model,
        )
        self.count(res.sample_grads)

    def step(self, it: int) -> float:
        self.use_net(it)
        reinit_(self.net)
        total = torch.zeros((), device=self.dev)
        for ol in range(self.outer_loop):
            self._freeze_bn()
            loss = self.match_loss()
            # w.r.t. the images only: the network weights need no gradient (and keep none for `fit`)
            (self.images.grad,) = torch.autograd.grad(loss, self.images)
            self.opt.step()
            total += loss.detach()
            if ol < self.outer_loop - 1:
                self._train_net()
        return float(total) / (self.k * self.outer_loop)


@register
class SiameseGradientMatching(GradientMatching):
    """DSA: gradient matching with differentiable siamese augmentation of both batches."""

    name = "dsa"
    paper = "Zhao & Bilen, Dataset Condensation with Differentiable Siamese Augmentation, ICML 2021"
    note = GradientMatching.note + "; DSA strategy color_crop_cutout_flip_scale_rotate for every dataset"
    options_type = DSAOptions
    opts: DSAOptions
    presets = GradientMatching.presets

    def setup(self, bundle: DatasetBundle) -> None:
        self.augment_strategy = self.opts.dsa_strategy
        DSA(self.augment_strategy)  # validates the strategy
        super().setup(bundle)
