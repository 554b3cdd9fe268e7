"""Trajectory matching (MTT; Cazenavette et al., CVPR 2022) with a bounded-memory exact gradient.

Each iteration samples an expert and a start epoch t <= max_start_epoch, starts a student at the
expert's parameters θ_t, takes `syn_steps` SGD steps w_{i+1} = w_i − α ∇ℓ(w_i; aug(X_i)) on minibatches
of the synthetic set with the learnable step size α, and minimises
‖w_N − θ_{t+M}‖² / ‖θ_t − θ_{t+M}‖² over the images (and α, and optionally soft labels).

Memory: back-propagating through the unrolled graph (the paper's implementation) keeps every step's
activations, so memory grows linearly with `syn_steps`. Here the forward unroll keeps only the flat
parameter vectors w_i (one [P] vector per step, no graph), and the backward pass walks the steps in
reverse with the adjoint λ_i = ∂L/∂w_i, recomputing one step's graph at a time:
    λ_N = 2 (w_N − θ_{t+M}) / ‖θ_t − θ_{t+M}‖²,
    ∂L/∂X_i = −α (∂g_i/∂X_i)ᵀ λ_{i+1},   ∂L/∂α = −Σ_i g_iᵀ λ_{i+1},   λ_i = λ_{i+1} − α H_i λ_{i+1},
with g_i = ∇_w ℓ(w_i; X_i) and H_i λ a Hessian-vector product. This is the constant-memory idea of
TESLA (Cui et al., ICML 2023: the loss is linear in the per-step gradients, so each step's image
gradient is computed from one recomputed step), extended with the H_i λ terms so the gradient is
exactly MTT's (TESLA drops them); peak memory is one step's graph plus N parameter vectors.

With a match space, every member of the match pool gets its own expert buffer (`num_experts` experts
each, reused and extended like any buffer) and each iteration matches an expert of its drawn member.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nasdd.arch import ArchSpec
from nasdd.augment import DSA
from nasdd.data import DatasetBundle
from nasdd.distill.base import Distiller, register
from nasdd.distill.experts import EXPERT_RECIPE, ExpertBuffer, train_experts, whiten, zca_matrix
from nasdd.distill.options import Options, at_least, positive, unrecorded
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe


class FlatNet:
    """Run `module` functionally with its parameters given as one flat vector (parameters() order)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]

    def __call__(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(self.names, w.split(self.numels), self.shapes, strict=True)}
        return functional_call(self.module, params, (x,))


@dataclass
class Plan:
    """The minibatches (indices into the synthetic set) and augmentation seeds of one unroll."""

    batches: list[torch.Tensor]
    seeds: list[int]
    dsa: DSA | None = None

    def inputs(self, images: torch.Tensor, labels: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[self.batches[i]]
        if self.dsa is not None:
            x = self.dsa(x, self.seeds[i])
        return x, labels[self.batches[i]]


def make_plan(n: int, steps: int, batch: int, dsa: DSA | None, device: torch.device) -> Plan:
    """`steps` minibatches of size `batch` from successive random permutations (global RNG)."""
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        batches += list(torch.randperm(n).split(batch))
    seeds = [int(s) for s in torch.randint(2**31, (steps,))]
    return Plan([b.to(device) for b in batches[:steps]], seeds, dsa)


def _step_grad(net: FlatNet, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    loss = F.cross_entropy(net(w, x), y)
    return torch.autograd.grad(loss, w, create_graph=create_graph)[0]


def unroll(
    net: FlatNet, w0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: float, plan: Plan
) -> list[torch.Tensor]:
    """The student's parameter vectors w_0..w_N (no graph is kept)."""
    ws = [w0.detach()]
    x_all, y_all = images.detach(), labels.detach()
    for i in range(len(plan.batches)):
        w = ws[-1].clone().requires_grad_(True)
        x, y = plan.inputs(x_all, y_all, i)
        ws.append(ws[-1] - lr * _step_grad(net, w, x, y, False).detach())
    return ws


def match_loss(
    net: FlatNet, w0: torch.Tensor, target: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: float,
    plan: Plan,
) -> float:  # fmt: skip
    """The normalised trajectory-matching loss (forward only)."""
    w_n = unroll(net, w0, images, labels, lr, plan)[-1]
    return float((w_n - target).pow(2).sum() / (w0 - target).pow(2).sum())


def match_grad(
    net: FlatNet, w0: torch.Tensor, target: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
    lr: float | torch.Tensor, plan: Plan,
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(loss, ∂L/∂images, ∂L/∂lr, ∂L/∂labels or None): exact, one step's graph in memory at a time."""
    lr_value = float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr)
    ws = unroll(net, w0, images, labels, lr_value, plan)
    denom = (w0 - target).pow(2).sum()
    diff = ws[-1] - target
    loss = float(diff.pow(2).sum() / denom)
    lam = 2 * diff / denom
    learn_y = labels.is_floating_point() and labels.requires_grad
    g_img, g_lr = torch.zeros_like(images), torch.zeros((), dtype=w0.dtype, device=w0.device)
    g_lab = torch.zeros_like(labels) if learn_y else None
    for i in reversed(range(len(plan.batches))):
        w = ws[i].clone().requires_grad_(True)
        x, y = plan.inputs(images, labels, i)
        g = _step_grad(net, w, x, y, True)
        g_lr -= (g.detach() * lam).sum()
        wrt = [w, images] + ([labels] if learn_y else [])
        vjp = torch.autograd.grad(g, wrt, grad_outputs=lam, allow_unused=True)
        if vjp[1] is not None:
            g_img -= lr_value * vjp[1]
        if g_lab is not None and vjp[2] is not None:  # labels learn
            g_lab -= lr_value * vjp[2]
        lam = lam - lr_value * vjp[0]
        del g, vjp, w, x, y
    return loss, g_img, g_lr, g_lab


def match_loss_unrolled(
    net: FlatNet, w0: torch.Tensor, target: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
    lr: torch.Tensor, plan: Plan,
) -> torch.Tensor:  # fmt: skip
    """The paper's implementation: back-propagate through the whole unrolled graph (memory ∝ steps).

    Kept as the reference the bounded-memory gradient is tested and benchmarked against.
    """
    w = w0.detach().clone().requires_grad_(True)
    for i in range(len(plan.batches)):
        x, y = plan.inputs(images, labels, i)
        w = w - lr * _step_grad(net, w, x, y, True)
    return (w - target).pow(2).sum() / (w0 - target).pow(2).sum()


@dataclass(frozen=True)
class MTTOptions(Options):
    """MTT's options; `reference`: back-propagate through the whole unroll (memory ∝ syn_steps; speed
    benchmark)."""

    num_experts: int = 5
    expert_epochs: int = 2  # M: expert epochs the student must cover
    max_start_epoch: int = 10
    syn_steps: int = 20  # N: student steps per iteration
    batch_syn: int = 0  # minibatch of synthetic images per student step (0 = all)
    lr_teacher: float = 0.01  # the experts' SGD lr and the initial student step size
    lr_lr: float = 1e-6  # the paper uses 1e-7..1e-5; the lr gradient is large when experts move little
    momentum: float = 0.5  # of the image / lr / label optimisers, as in the paper
    zca: bool = False
    learn_labels: bool = False
    lr_labels: float = 1.0
    dsa: str | None = "color_crop_cutout_scale_rotate"  # DSA strategy; "none" disables it
    buffer_root: str | Path | None = None  # expert buffers under BUFFER_ROOT/experts (None: ~/.cache/nasdd)
    expert_recipe: str | None = ""  # key=value overrides of the plain-SGD expert recipe
    reference: bool = unrecorded(False)

    def check(self) -> None:
        at_least(self, 1, "num_experts", "expert_epochs", "syn_steps")
        at_least(self, 0, "max_start_epoch", "batch_syn")
        positive(self, "lr_teacher", "lr_lr", "lr_labels")


@register
class MTT(Distiller):
    """Matching training trajectories; experts come from (and are cached in) an expert buffer.

    Sample-gradients per iteration: 3 x syn_steps x batch_syn (the unroll, the recomputed step and its
    Hessian-vector product); expert training is reported separately under provenance `experts`.
    """

    name = "mtt"
    family = "parameter matching"
    paper = "Cazenavette et al., Dataset Distillation by Matching Training Trajectories, CVPR 2022"
    note = (
        "exact gradient in bounded memory (adjoint recomputation, TESLA-style, Cui et al. ICML 2023); "
        "DSA without flip, per-sample draws; step size clamped >= 1e-6; cpu preset: width-32 ConvNet, "
        "3 experts x 6 epochs, 400 iterations, 20 images per student step"
    )
    default_iterations = 1000
    default_lr_img = 100.0
    options_type = MTTOptions
    opts: MTTOptions
    syn_lr: torch.Tensor  # learned: set in `setup`
    presets = {
        "quick": {
            "iterations": 20,
            "arch": ArchSpec.make("convnet", depth=1, width=16),
            "num_experts": 2,
            "expert_epochs": 2,
            "max_start_epoch": 2,
            "syn_steps": 10,
            "lr_img": 100.0,
            "lr_lr": 1e-7,
        },
        "cpu": {
            "iterations": 400,
            "arch": ArchSpec.make(
                "convnet", depth=3, width=32, activation="relu", normalization="instancenorm", pooling="avgpool"
            ),
            "num_experts": 3,
            "expert_epochs": 2,
            "max_start_epoch": 4,
            "syn_steps": 20,
            "batch_syn": 20,
            "lr_img": 100.0,  # 1000 measured worse on mnist5k ipc 10 (91.14 against 92.18)
        },
    }

    # ------------------------------------------------------------------------------------- setup
    def setup(self, bundle: DatasetBundle) -> None:
        o = self.opts
        start = time.perf_counter()
        recipe = TrainRecipe.parse(o.expert_recipe or None, replace(EXPERT_RECIPE, lr=float(o.lr_teacher)))
        # one buffer per matching architecture (the fixed arch, or every member of the match pool)
        self.buffers: dict[ArchSpec, ExpertBuffer] = {
            arch: train_experts(
                bundle,
                arch=arch,
                num_experts=o.num_experts,
                epochs=o.max_start_epoch + o.expert_epochs,
                recipe=recipe,
                root=o.buffer_root,
                zca=o.zca,
                device=self.dev,
            )
            for arch in self.pool_
        }
        self.buffer = self.buffers[self.pool_[0]]
        self.expert_wall = time.perf_counter() - start  # not distillation cost: subtracted in to_proxy
        self.trajs_by_arch = {a: [t.to(self.dev) for t in b.trajectories] for a, b in self.buffers.items()}
        self.zca = zca_matrix(bundle.x_train) if o.zca else None
        if self.zca is not None and self.init == "real":
            with torch.no_grad():
                self.images.copy_(whiten(self.images, self.zca))
        self.nets = {a: FlatNet(self.network(a)) for a in self.pool_}
        for a, net in self.nets.items():
            if sum(net.numels) != self.trajs_by_arch[a][0].shape[1]:
                raise NasddError(f"expert buffer {self.buffers[a].folder} does not hold parameters of {a}")
        self.net, self.trajs = self.nets[self.pool_[0]], self.trajs_by_arch[self.pool_[0]]
        self.dsa = None if o.dsa in (None, "", "none") else DSA(o.dsa, per_sample=True)
        self.syn_lr = torch.tensor(float(o.lr_teacher), device=self.dev, requires_grad=True)
        self.opt_img = torch.optim.SGD([self.images], lr=self.lr_img, momentum=o.momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=o.lr_lr, momentum=o.momentum)
        self.opt_lab = None
        if o.learn_labels:
            self.labels = F.one_hot(self.labels, bundle.num_classes).float().requires_grad_(True)
            self.opt_lab = torch.optim.SGD([self.labels], lr=o.lr_labels, momentum=o.momentum)

    # -------------------------------------------------------------------------------------- step
    def step(self, it: int) -> float:
        o = self.opts
        arch = self.matching_arch(it)  # the fixed arch, or this iteration's member of the match space
        self.net, self.trajs = self.nets[arch], self.trajs_by_arch[arch]
        traj = self.trajs[int(torch.randint(len(self.trajs), ()))]
        t = int(torch.randint(o.max_start_epoch + 1, ()))
        w0, target = traj[t], traj[t + o.expert_epochs]
        n = len(self.images)
        batch = o.batch_syn or n
        plan = make_plan(n, o.syn_steps, min(batch, n), self.dsa, self.dev)
        if self.opts.reference:
            loss, g_img, g_lr, g_lab = self._reference_grad(w0, target, plan)
        else:
            loss, g_img, g_lr, g_lab = match_grad(self.net, w0, target, self.images, self.labels, self.syn_lr, plan)
        self.count(3 * sum(len(b) for b in plan.batches))
        self.images.grad, self.syn_lr.grad = g_img, g_lr.reshape(())
        self.opt_img.step()
        self.opt_lr.step()
        with torch.no_grad():
            self.syn_lr.clamp_(min=1e-6)  # a non-positive step size would undo training
        if self.opt_lab is not None and g_lab is not None:
            self.labels.grad = g_lab
            self.opt_lab.step()
            with torch.no_grad():  # project back onto the probability simplex
                self.labels.clamp_(min=0)
                self.labels.div_(self.labels.sum(1, keepdim=True).clamp_min(1e-8))
        return loss

    def _reference_grad(
        self, w0: torch.Tensor, target: torch.Tensor, plan: Plan
    ) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`match_grad`'s outputs by back-propagating through the whole unroll (the paper's implementation)."""
        loss = match_loss_unrolled(self.net, w0, target, self.images, self.labels, self.syn_lr, plan)
        wrt = [self.images, self.syn_lr] + ([self.labels] if self.opt_lab is not None else [])
        grads = torch.autograd.grad(loss, wrt)
        return float(loss.detach()), grads[0], grads[1], grads[2] if len(grads) > 2 else None

    # ------------------------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        state = {"opt_img": self.opt_img.state_dict(), "opt_lr": self.opt_lr.state_dict()}
        if self.opt_lab is not None:
            state["opt_lab"] = self.opt_lab.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.opt_img.load_state_dict(state["opt_img"])
        self.opt_lr.load_state_dict(state["opt_lr"])
        if self.opt_lab is not None:
            leaf = self.opt_lab.param_groups[0]["params"][0]
            with torch.no_grad():
                leaf.copy_(self.labels)
            self.labels = leaf
            self.opt_lab.load_state_dict(state["opt_lab"])

    def to_proxy(self) -> ProxySet:
        proxy = super().to_proxy()
        cost = proxy.provenance["cost"]
        cost["seconds"] = round(max(cost["seconds"] - getattr(self, "expert_wall", 0.0), 0.0), 3)
        buffers = list(self.buffers.values())
        folders = [str(b.folder) for b in buffers]
        proxy.provenance["experts"] = {
            "folder": folders[0] if len(folders) == 1 else folders,
            "experts": sum(len(b.trajectories) for b in buffers),
            "epochs": int(buffers[0].trajectories[0].shape[0] - 1),
            "cost": {
                "seconds": round(sum(b.seconds for b in buffers), 3),
                "sample_grads": sum(b.sample_grads for b in buffers),
            },
        }
        return proxy
