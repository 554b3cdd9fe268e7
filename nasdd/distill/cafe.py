"""CAFE: Condense dataset by Aligning FEatures (Wang et al., CVPR 2022).

Loss on the synthetic images, per image update:
  - layer-wise feature alignment: for every conv block (`ConvNet.layer_outputs`), the squared distance
    (MSE, summed) between per-class mean features of a real batch and of the synthetic set, weighted per layer;
  - discrimination: the synthetic class centres of the last-layer features classify the real batch
    (logits = real features . centres / temperature), cross-entropy summed over the real batch, weight beta.
Dynamic bi-level optimisation: every iteration (round) starts from a freshly initialised network. The outer
loop updates the images (SGD, lr 0.1, momentum 0.5; lr halved at 60/80/90% of the rounds as in the
authors' schedule) and stops when the network's accuracy on a real query batch has varied by less than
lambda_1 over the last `window` updates; between image updates the inner loop trains the network on the
synthetic set (the one trainer, one epoch at a time, lr 0.01) until its query accuracy has risen by more than
lambda_2, so the network neither under- nor over-fits the synthetic set.

CPU deviations (also in `note`): the outer and inner loops are capped (`max_outer`, `max_inner`), the
query batch is 32 per class instead of 128; the `cpu` preset uses 10 rounds, 64 real images and 16 query
images per class, a window of 3, at most 10 outer and 5 inner steps per round. The authors' code trains
without augmentation by default (`dsa_strategy` enables DSA, the CAFE+DSA variant).
Speed: on CPU the network passes run in cache-sized chunks (`nasdd.distill.chunks`; `reference=True`: one batch).
Cost: real and query images are forward-only (one sample-gradient each), synthetic images forward+backward,
inner training as the trainer counts it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from nasdd.arch import ArchSpec
from nasdd.augment import DSA
from nasdd.data import DatasetBundle
from nasdd.distill.base import Distiller, register
from nasdd.distill.chunks import chunked
from nasdd.distill.dm import RealSampler, class_means
from nasdd.distill.options import Options, unrecorded
from nasdd.errors import NasddError
from nasdd.models import ConvNet, reinit_
from nasdd.train import TrainRecipe, fit

T = TypeVar("T")


@dataclass(frozen=True)
class CAFEOptions(Options):
    """CAFE's options; `reference`: every pass in one batch, as before the chunks (tests and the speed
    benchmark)."""

    batch_real: int = 256
    query_per_class: int = 32
    momentum: float = 0.5
    lr_net: float = 0.01
    beta: float = 0.01
    temperature: float = 1.0
    layer_weights: list[float] | None = None  # one weight per conv block; None = 1.0 each
    lambda_1: float = 0.04
    lambda_2: float = 0.03
    window: int = 10
    max_outer: int = 50
    max_inner: int = 50
    dsa_strategy: str = "none"
    reference: bool = unrecorded(False)


@register
class CAFE(Distiller):
    """CAFE: layer-wise feature alignment + discrimination loss with dynamic bi-level optimisation."""

    name = "cafe"
    family = "distribution matching"
    paper = "Wang et al., CAFE: Learning to Condense Dataset by Aligning Features, CVPR 2022"
    note = "outer/inner loops capped; cpu preset: 10 rounds, 64 real + 16 query/class, window 3, <=10 outer, <=5 inner"
    default_iterations = 2000
    default_lr_img = 0.1
    options_type = CAFEOptions
    opts: CAFEOptions
    presets = {
        "quick": {
            "iterations": 6,
            "batch_real": 32,
            "query_per_class": 16,
            "window": 3,
            "max_outer": 10,
            "max_inner": 5,
        },
        "cpu": {
            "iterations": 10,
            "batch_real": 64,
            "query_per_class": 16,
            "window": 3,
            "max_outer": 10,
            "max_inner": 5,
        },
    }

    def setup(self, bundle: DatasetBundle) -> None:
        for arch in self.pool_:
            self.conv_net(arch)  # refuses other families before anything is set up
        o = self.opts
        strategy = o.dsa_strategy
        self.dsa = None if strategy in (None, "none", "") else DSA(strategy)
        self.sampler = RealSampler(bundle, int(o.batch_real), self.dev)
        self.query = RealSampler(bundle, int(o.query_per_class), self.dev)
        self.opt = torch.optim.SGD([self.images], lr=self.lr_img, momentum=float(o.momentum))
        self.k = bundle.num_classes
        depths = sorted({len(self.conv_net(a).blocks) for a in self.pool_})
        if o.layer_weights is not None and depths != [len(o.layer_weights)]:
            mixed = "; the match pool mixes depths, leave it unset" if len(depths) > 1 else ""
            need = " or ".join(map(str, depths))
            raise NasddError(f"cafe option layer_weights needs {need} values (one per conv block){mixed}")
        self.use_net(0)

    def conv_net(self, arch: ArchSpec) -> ConvNet:
        """The base's network of `arch`, which must be a ConvNet (cafe matches its layer outputs)."""
        net = self.network(arch)
        if not isinstance(net, ConvNet):
            raise NasddError(f"cafe needs a network with layer outputs (a ConvNet); got {arch}")
        return net

    def use_net(self, it: int) -> None:
        """Match through iteration `it`'s network (the fixed `arch` or a member of the match space), with
        one layer weight per conv block of that network."""
        self.net = self.conv_net(self.matching_arch(it))
        w = self.opts.layer_weights
        self.weights = [1.0] * len(self.net.blocks) if w is None else [float(v) for v in w]

    def _pass(self, fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> T:
        """`fn(x)` through the network: in cache-sized chunks on CPU, in one batch with `reference`."""
        return fn(x) if self.opts.reference else chunked(fn, self.net, x)

    def _augment(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return x if self.dsa is None else self.dsa(x, seed)

    def image_update(self) -> float:
        """One outer-loop step: the CAFE loss on the current network, one SGD step on the images."""
        xr, yr = self.sampler()
        seed = int(torch.randint(2**31 - 1, (1,)))
        with torch.no_grad():
            real = self._pass(self.net.layer_outputs, self._augment(xr, seed))
        syn = self._pass(self.net.layer_outputs, self._augment(self.images, seed))
        loss = self.images.new_zeros(())
        for w, r, s in zip(self.weights, real, syn, strict=True):
            diff = class_means(r.flatten(1), yr, self.k) - class_means(s.flatten(1), self.labels, self.k)
            loss = loss + w * (diff**2).sum()
        centres = class_means(syn[-1].flatten(1), self.labels, self.k)
        logits = real[-1].flatten(1) @ centres.t() / float(self.opts.temperature)
        loss = loss + float(self.opts.beta) * F.cross_entropy(logits, yr, reduction="sum")
        (grad,) = torch.autograd.grad(loss, self.images)
        self.images.grad = grad
        self.opt.step()
        self.count(len(xr) + len(self.images))
        return float(loss.detach())

    @torch.no_grad()
    def query_accuracy(self) -> float:
        """The network's accuracy on a fresh real query batch (all classes)."""
        xq, yq = self.query()
        was = self.net.training
        self.net.eval()
        acc = (self._pass(self.net, xq).argmax(1) == yq).float().mean()
        self.net.train(was)
        self.count(len(xq))
        return float(acc)

    def inner_loop(self, start_acc: float) -> None:
        """Train the network on the synthetic set until its query accuracy rises by more than lambda_2."""
        o = self.opts
        recipe = TrainRecipe(
            epochs=1,
            batch_size=256,
            lr=float(o.lr_net),
            momentum=0.0,
            weight_decay=0.0,
            schedule="constant",
            augment=None if self.dsa is None else f"dsa:{'_'.join(self.dsa.ops)}",
        )
        x, y = self.images.detach(), self.labels
        for _ in range(int(o.max_inner)):
            seed = int(torch.randint(2**31 - 1, (1,)))
            self.count(fit(self.net, x, y, recipe, seed=seed, device=self.dev).sample_grads)
            if self.query_accuracy() - start_acc > float(o.lambda_2):
                break

    def step(self, it: int) -> float:
        o = self.opts
        for g in self.opt.param_groups:  # the authors' schedule: lr halved at 60, 80 and 90% of the rounds
            g["lr"] = self.lr_img * 0.5 ** sum(it >= f * self.iterations for f in (0.6, 0.8, 0.9))
        self.use_net(it)
        reinit_(self.net)
        self.net.train()
        watch: collections.deque[float] = collections.deque(maxlen=int(o.window))
        losses = []
        for _ in range(int(o.max_outer)):
            losses.append(self.image_update())
            acc = self.query_accuracy()
            watch.append(acc)
            if len(watch) == watch.maxlen and max(watch) - min(watch) < float(o.lambda_1):
                break
            self.inner_loop(acc)
        return sum(losses) / len(losses)

    def extra_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
