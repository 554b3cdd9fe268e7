"""Performance matching by kernel ridge regression (KRR): the proxy is the support set of a KRR whose
predictions on real batches are optimised (KIP, Nguyen, Chen & Lee, ICLR 2021).

Every outer iteration: draw a real batch (x_t, y_t), build the kernel between the support (synthetic)
images and x_t, predict `K_ts (K_ss + lambda I)^-1 Y_s` with `lambda = reg * mean(diag K_ss)`, and
minimise the MSE to the one-hot `y_t` (`loss="mse"`, KIP's choice) or the cross-entropy of the
prediction divided by `label_temperature` (`loss="ce"`) with respect to the images (Adam) and,
with `learn_labels`, the support targets Y_s. The three methods differ only in the kernel (kip's kernel
networks have no normalisation layers by default, like the infinite-width ConvNet kernels of KIP;
with instance norm its empirical NTK was much noisier on digits; krr keeps the matching network's
instance norm, which measured better for the random-feature kernel on digits and mnist5k):

- `krr`: conjugate kernel (NNGP of the readout) of the matching ConvNet estimated from random finite
  networks, as in RFAD (Loo et al., NeurIPS 2022): the features (before the classifier) of `models`
  freshly initialised ConvNets of `width`, scaled by 1/sqrt(dim) and concatenated; kernel = inner
  product; networks resampled every iteration.
- `kip`: empirical neural tangent kernel of `models` freshly initialised narrow scalar-output ConvNets
  (`torch.func.vmap(jacrev)` per-sample parameter Jacobians, kernel = J J^T / #params, averaged over
  the networks, resampled every iteration) — a finite-width Monte-Carlo estimate of the ConvNet NTK
  that KIP computes in closed form (neural-tangents) for infinitely wide networks.
- `frepo`: FRePo (Zhou, Nezhadarya & Ba, NeurIPS 2022): the conjugate kernel of the last-layer
  features of a pool of `pool_size` networks that are being trained on the synthetic set (one random
  network per iteration; after its use it takes `train_steps` SGD steps on the current proxy with the
  evaluation recipe's optimiser, cross-entropy on the proxy's label probabilities; a network is
  re-initialised after `max_online_steps` steps).

Labels: learned targets are KRR regression targets. The ProxySet stores `softmax(Y_s /
label_temperature)`, the trainer's cross-entropy targets (one-hot targets give ~hard labels at the
default temperature 0.1). The kip and krr kernel networks run in eval mode, so a BatchNorm member of a
match space is one fixed feature map (its initial statistics), not a function of the batch.

Sample-gradient count: every real or synthetic image passed through a network counts once per network
(forward-only feature passes included), the support once more for the backward to the images; for
`kip` each Jacobian row counts once more (it is a backward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.distill.base import register
from nasdd.distill.options import at_least
from nasdd.distill.soft_labels import LabelOptions, SoftLabels, with_width
from nasdd.models import Classifier, build


@dataclass(frozen=True)
class KRROptions(LabelOptions):
    """Options of the kernel methods (frepo's): real batch, ridge, loss (mse | ce), the narrowed ConvNet
    (width, normalisation; None: the arch's)."""

    batch_real: int = 256
    reg: float = 1e-4
    loss: str = "mse"
    width: int | None = 64
    normalization: str | None = None

    def check(self) -> None:
        super().check()
        if self.loss not in ("mse", "ce"):
            raise ValueError(f"loss {self.loss!r} is unknown; valid losses: mse, ce")


@dataclass(frozen=True)
class RandomFeatureOptions(KRROptions):
    """krr: and the number of random networks per iteration."""

    models: int = 4

    def check(self) -> None:
        super().check()
        at_least(self, 1, "models")


@dataclass(frozen=True)
class KIPOptions(RandomFeatureOptions):
    """kip: two narrow networks without normalisation."""

    models: int = 2
    width: int | None = 16
    normalization: str | None = "none"


@dataclass(frozen=True)
class FRePoOptions(KRROptions):
    """frepo: a pool of `pool_size` networks trained `train_steps` per iteration, reset after
    `max_online_steps`."""

    pool_size: int = 4
    train_steps: int = 1
    max_online_steps: int = 100

    def check(self) -> None:
        super().check()
        at_least(self, 1, "pool_size")


def krr_predict(k_ss: torch.Tensor, k_ts: torch.Tensor, y_s: torch.Tensor, reg: float) -> torch.Tensor:
    """Kernel ridge regression prediction K_ts (K_ss + reg * mean(diag K_ss) I)^-1 Y_s."""
    ridge = reg * k_ss.diagonal().mean() * torch.eye(len(k_ss), device=k_ss.device, dtype=k_ss.dtype)
    return k_ts @ torch.linalg.solve(k_ss + ridge, y_s)


class KernelDistiller(SoftLabels):
    """Shared KRR objective; subclasses provide `kernels(x_t) -> (K_ss, K_ts)`."""

    family = "performance matching"
    default_lr_img = 0.01
    opts: KRROptions

    def setup(self, bundle: DatasetBundle) -> None:
        o = self.opts
        self.inner = with_width(self.arch, o.width, o.normalization)
        self.init_targets()
        self.x_real, self.y_real = bundle.x_train.to(self.dev), bundle.y_train.to(self.dev)
        self.opt = torch.optim.Adam([{"params": [self.images], "lr": self.lr_img}, *self.label_groups()])

    def new_net(self, outputs: int, arch: ArchSpec | None = None) -> Classifier:
        """A freshly initialised matching network of `arch` (default: the narrowed fixed one; global RNG,
        seeded per iteration by the base)."""
        arch = self.inner if arch is None else arch
        return build(arch, self.bundle.channels, self.bundle.image_size, outputs).to(self.dev)

    def kernels(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step(self, it: int) -> float:
        o = self.opts
        idx = torch.randint(len(self.x_real), (o.batch_real,), device=self.dev)
        x_t, y_t = self.x_real[idx], self.y_real[idx]
        self.it_, self.archs = it, self.inner_archs(it, getattr(o, "models", 1))
        k_ss, k_ts = self.kernels(x_t)
        pred = krr_predict(k_ss, k_ts, self.targets, o.reg)
        if o.loss == "mse":
            loss = 0.5 * (pred - F.one_hot(y_t, self.bundle.num_classes).float()).pow(2).sum(1).mean()
        else:
            loss = F.cross_entropy(pred / o.label_temperature, y_t)
        self.opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[self.images, *([self.targets] if o.learn_labels else [])])
        self.opt.step()
        self.after_step()
        return float(loss.detach())

    def after_step(self) -> None:
        pass

    def extra_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])


def _feature_kernels(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fs @ fs.T, ft @ fs.T


@register
class RandomFeatureKRR(KernelDistiller):
    """KRR with the random-feature conjugate kernel of freshly initialised ConvNets (RFAD-style)."""

    name = "krr"
    paper = "KIP objective (Nguyen et al., ICLR 2021) with RFAD random features (Loo et al., NeurIPS 2022)"
    note = (
        "kernel = conjugate/NNGP kernel estimated by the features of `models` random finite ConvNets of "
        "`width` (resampled each iteration); MSE to one-hot by default; "
        "learned labels stored as softmax(Y/T)"
    )
    default_iterations = 1000
    options_type = RandomFeatureOptions
    opts: RandomFeatureOptions
    presets = {
        "quick": {"iterations": 100, "batch_real": 128},
        "cpu": {"iterations": 300, "batch_real": 128, "models": 2, "lr_img": 0.03, "learn_labels": True},
    }

    def kernels(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ft = [], []
        for arch in self.archs:  # features of different widths: each scaled by its own 1/sqrt(dim)
            net = self.new_net(self.bundle.num_classes, arch).eval()  # BatchNorm: one fixed feature map
            net.requires_grad_(False)
            scale = 1 / math.sqrt(net.feature_dim)
            fs.append(net.features(self.images) * scale)
            with torch.no_grad():
                ft.append(net.features(x_t) * scale)
        self.count(self.opts.models * (2 * len(self.images) + len(x_t)))
        return _feature_kernels(torch.cat(fs, 1), torch.cat(ft, 1))


@register
class KernelInducingPoints(KernelDistiller):
    """KIP with the empirical NTK of narrow random scalar-output ConvNets (finite-width estimate)."""

    name = "kip"
    paper = "Nguyen, Chen & Lee, Dataset Meta-Learning from Kernel Ridge-Regression (ICLR 2021)"
    note = (
        "kernel = empirical NTK (per-sample parameter Jacobians, torch.func) of `models` random narrow "
        "scalar-output ConvNets of `width` without normalisation, resampled each iteration, instead of the "
        "infinite-width NTK; "
        "MSE to one-hot by default; learned labels stored as softmax(Y/T)"
    )
    default_iterations = 1000
    options_type = KIPOptions
    opts: KIPOptions
    presets = {"quick": {"iterations": 100, "batch_real": 128}, "cpu": {"iterations": 3000, "batch_real": 128}}

    def kernels(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_ss = k_ts = torch.zeros((), device=self.dev)  # sums over the networks
        for arch in self.archs:
            net = self.new_net(1, arch).eval()  # per-sample Jacobians: BatchNorm must not use batch statistics
            params = {k: p.detach() for k, p in net.named_parameters()}
            n_params = sum(p.numel() for p in params.values())

            def f(p: dict[str, torch.Tensor], x: torch.Tensor, net: nn.Module = net) -> torch.Tensor:
                return functional_call(net, p, (x.unsqueeze(0),)).squeeze()

            jac = vmap(jacrev(f), in_dims=(None, 0))
            js = torch.cat([j.flatten(1) for j in jac(params, self.images).values()], 1)
            with torch.no_grad():
                jt = torch.cat([j.flatten(1) for j in jac(params, x_t).values()], 1)
            k_ss = k_ss + js @ js.T / n_params
            k_ts = k_ts + jt @ js.T / n_params
        self.count(self.opts.models * (3 * len(self.images) + 2 * len(x_t)))
        return k_ss, k_ts


@register
class FRePo(KernelDistiller):
    """FRePo: KRR on the last-layer features of a pool of networks trained online on the proxy."""

    name = "frepo"
    paper = "Zhou, Nezhadarya & Ba, Dataset Distillation using Neural Feature Regression (NeurIPS 2022)"
    note = (
        "kernel = conjugate kernel of the last-layer features of one of `pool_size` ConvNets of `width` "
        "trained online on the proxy (SGD 0.01, momentum 0.9, CE on softmax(Y/T)), reset after "
        "`max_online_steps`; MSE to one-hot by default"
    )
    default_iterations = 1000
    options_type = FRePoOptions
    opts: FRePoOptions
    presets = {"quick": {"iterations": 100, "batch_real": 128}, "cpu": {"iterations": 500, "batch_real": 128}}

    def setup(self, bundle: DatasetBundle) -> None:
        super().setup(bundle)
        o = self.opts
        self.slot_archs = self.inner_archs(-1, o.pool_size)  # with a match space: members as drawn
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.pool = [self._fresh(a) for a in self.slot_archs]
        self.ages = [0] * o.pool_size

    def _fresh(self, arch: ArchSpec) -> tuple[Classifier, torch.optim.Optimizer]:
        net = self.new_net(self.bundle.num_classes, arch)
        return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def kernels(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.current = int(torch.randint(len(self.pool), (1,)))
        net = self.pool[self.current][0]
        fs = net.features(self.images)
        with torch.no_grad():
            ft = net.features(x_t)
        self.count(2 * len(self.images) + len(x_t))
        return _feature_kernels(fs, ft)

    def after_step(self) -> None:
        i, o = self.current, self.opts
        net, opt = self.pool[i]
        x, y = self.images.detach(), self.target_probs().detach()
        for _ in range(o.train_steps):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.count(o.train_steps * len(x))
        self.ages[i] += o.train_steps
        if self.ages[i] >= o.max_online_steps:
            self.slot_archs[i] = self.inner_archs(self.it_)[0]
            self.pool[i], self.ages[i] = self._fresh(self.slot_archs[i]), 0

    def extra_state(self) -> dict[str, Any]:
        pool = [{"net": net.state_dict(), "opt": opt.state_dict()} for net, opt in self.pool]
        archs = [a.to_dict() for a in self.slot_archs]
        return {**super().extra_state(), "pool": pool, "ages": list(self.ages), "archs": archs}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        for i, saved in enumerate(state.get("archs", [])):  # slots reset since setup hold other members
            if ArchSpec.from_dict(saved) != self.slot_archs[i]:
                self.slot_archs[i] = ArchSpec.from_dict(saved)
                self.pool[i] = self._fresh(self.slot_archs[i])
        for (net, opt), saved in zip(self.pool, state["pool"], strict=True):
            net.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
        self.ages = list(state["ages"])
