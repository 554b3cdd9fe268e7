"""RaT-BPTT: random truncated back-propagation through time (Feng, Vedantam & Kempe, ICLR 2024).

Performance matching by meta-learning, trained the way the paper makes it work. Every outer iteration draws
a fresh random initialisation of the matching network and trains it on the synthetic set with an inner
optimiser for n_pre + W steps, W = `window` and n_pre uniform in [0, unroll − W]: the n_pre steps run
without a graph, the last W are differentiated. The trained network's cross-entropy on a random real batch
is the meta-loss; its gradient reaches the images (and learned labels) through the window only. The outer
optimiser is Adam; as in the paper's code, the image gradient is clipped to twice an exponential moving
average of its norm (`clip_ema`, 0 disables).

Exact gradient in bounded memory: forward, the window keeps only the inner optimiser's flat state (w and a
momentum buffer for `sgd`; w, m, v for `adam`) before each step; backward walks the window in reverse with
the adjoint of that state, rebuilding one inner step's graph at a time (`mtt.FlatNet` runs the network from
a flat vector through torch.func.functional_call). Peak memory is one step's double-backward graph plus W
state vectors, whatever `unroll` is; `window_loss_unrolled` (plain autograd through the window, what the
paper does with `higher`) is kept as the reference the tests compare against.

Paper settings (official code, CIFAR-10 ipc 10): unroll 200, window 60, inner Adam lr 1e-3 (its SGD option:
momentum 0.9, weight decay 5e-4), outer Adam lr 1e-3 on images and on learned labels, real batch 5000,
synthetic batch = all images (batch_per_class = ipc), flip+rotate augmentation on both sides, ZCA, one
network per outer step, tens of thousands of outer steps. Defaults here follow them, except: labels are
the project's learned soft labels (`softmax(y / label_temperature)`, shared with dd) instead of clipped raw
label weights; no augmentation by default (`dsa`; digits are not flip-invariant); no ZCA; images start
from real samples (`init`) instead of a Gaussian-cluster initialisation.
CPU preset deviations: matching ConvNet 32 wide; a shorter unroll and window; the inner optimiser is the
evaluation recipe's (SGD lr 0.01, momentum 0.9, weight decay 5e-4); a larger image lr (0.01) and label
lr (0.01); real batch 256; at ipc 10, minibatches of 20 synthetic images per inner step; 250 (ipc 1) and
120 (ipc 10) outer iterations instead of tens of thousands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nasdd.augment import DSA
from nasdd.data import DatasetBundle
from nasdd.distill.base import register
from nasdd.distill.mtt import FlatNet, Plan, make_plan
from nasdd.distill.soft_labels import LabelOptions, SoftLabels, with_width
from nasdd.models import build

TINY = 1e-30  # inside Adam's square root: keeps its derivative finite where v = 0 (value change < 1e-15)
State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class InnerOptimizer:
    """Plain-tensor SGD (momentum, weight decay; as torch.optim.SGD) or Adam (as torch.optim.Adam)."""

    kind: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init(self, w: torch.Tensor) -> State:
        return (w, torch.zeros_like(w)) if self.kind == "sgd" else (w, torch.zeros_like(w), torch.zeros_like(w))

    def update(self, state: State, g: torch.Tensor, t: int) -> State:
        """The state after step `t` (1-based) with gradient `g`; differentiable in state and g."""
        w = state[0]
        d = g + self.weight_decay * w if self.weight_decay else g
        if self.kind == "sgd":
            buf = self.momentum * state[1] + d
            return w - self.lr * buf, buf
        b1, b2 = self.betas
        m = b1 * state[1] + (1 - b1) * d
        v = b2 * state[2] + (1 - b2) * d * d
        step = (m / (1 - b1**t)) / ((v / (1 - b2**t) + TINY).sqrt() + self.eps)
        return w - self.lr * step, m, v


def _grad(net: FlatNet, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    return torch.autograd.grad(F.cross_entropy(net(w, x), y), w, create_graph=create_graph)[0]


def run_inner(
    net: FlatNet, opt: InnerOptimizer, w0: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, plan: Plan,
    n_pre: int, stop: int | None = None,
) -> list[State]:  # fmt: skip
    """Train from `w0` for steps [0, stop) of `plan` (all by default) without a graph; return the states
    before each step from `n_pre` on and the final one."""
    state, states = opt.init(w0.detach()), []
    x_all, y_all = images.detach(), targets.detach()
    for i in range(len(plan.batches) if stop is None else stop):
        if i >= n_pre:
            states.append(state)
        w = state[0].clone().requires_grad_(True)
        x, y = plan.inputs(x_all, y_all, i)
        g = _grad(net, w, x, y, False)
        with torch.no_grad():
            state = opt.update(state, g, i + 1)
    return states + [state]


def window_grad(
    net: FlatNet, opt: InnerOptimizer, w0: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, plan: Plan,
    n_pre: int, real: tuple[torch.Tensor, torch.Tensor],
) -> tuple[float, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(meta-loss on the `real` batch (images, labels), ∂L/∂images, ∂L/∂targets when targets require grad):
    exact through the window (steps n_pre..end of `plan`), one step's graph in memory at a time."""
    states = run_inner(net, opt, w0, images, targets, plan, n_pre)
    w_end = states[-1][0].clone().requires_grad_(True)
    loss = F.cross_entropy(net(w_end, real[0]), real[1])
    lam = [torch.autograd.grad(loss, w_end)[0], *(torch.zeros_like(t) for t in states[-1][1:])]
    learn_y = targets.requires_grad
    g_img = torch.zeros_like(images)
    g_lab = torch.zeros_like(targets) if learn_y else None
    for i in reversed(range(n_pre, len(plan.batches))):
        s = tuple(t.clone().requires_grad_(True) for t in states[i - n_pre])
        x, y = plan.inputs(images, targets, i)
        new = opt.update(s, _grad(net, s[0], x, y, True), i + 1)
        wrt = [*s, images, *([targets] if learn_y else [])]
        vjp = torch.autograd.grad(new, wrt, grad_outputs=lam, allow_unused=True)
        lam = [torch.zeros_like(t) if v is None else v for v, t in zip(vjp[: len(s)], s, strict=True)]
        if vjp[len(s)] is not None:
            g_img += vjp[len(s)]
        if g_lab is not None and vjp[-1] is not None:  # labels learn
            g_lab += vjp[-1]
        del new, vjp, s, x, y
    return float(loss.detach()), g_img, g_lab


def window_loss_unrolled(
    net: FlatNet, opt: InnerOptimizer, w0: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, plan: Plan,
    n_pre: int, real: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:  # fmt: skip
    """The same meta-loss with plain autograd through the window (memory grows with its length)."""
    state = run_inner(net, opt, w0, images, targets, plan, n_pre, stop=n_pre)[-1]
    state = (state[0].clone().requires_grad_(True), *state[1:])
    for i in range(n_pre, len(plan.batches)):
        x, y = plan.inputs(images, targets, i)
        state = opt.update(state, _grad(net, state[0], x, y, True), i + 1)
    return F.cross_entropy(net(state[0], real[0]), real[1])


@dataclass(frozen=True)
class RaTBPTTOptions(LabelOptions):
    """RaT-BPTT's options (labels learn by default)."""

    unroll: int = 200  # the longest inner training (the window ends it)
    window: int = 60  # inner steps differentiated
    inner_optim: str = "adam"  # adam | sgd
    inner_lr: float = 0.001
    inner_momentum: float = 0.9  # sgd only
    inner_wd: float = 0.0
    batch_syn: int = 0  # synthetic images per inner step (0 = all)
    batch_real: int = 5000  # real images in the meta-loss (capped at the training set)
    clip_ema: float = 0.9  # EMA coefficient of the image-gradient norm; clip at twice it (0 = no clipping)
    width: int | None = None  # matching ConvNet width (None: the arch's)
    normalization: str | None = None  # matching ConvNet normalisation (None: the arch's)
    dsa: str | None = "none"  # DSA strategy applied to synthetic and real batches
    learn_labels: bool = True
    lr_label: float = 0.001

    def check(self) -> None:
        super().check()
        if self.unroll < 1:
            raise ValueError(f"unroll must be a positive integer, got {self.unroll!r}")
        if not 1 <= self.window <= self.unroll:
            raise ValueError(f"window must be an integer in [1, unroll], got {self.window!r}")
        if self.inner_optim not in ("sgd", "adam"):
            raise ValueError(f"inner_optim {self.inner_optim!r} is unknown; valid: sgd, adam")
        checks = {"inner_lr": (0, None), "lr_label": (0, None), "inner_wd": (None, None),
                  "inner_momentum": (None, 1), "clip_ema": (None, 1)}  # fmt: skip
        for key, (above, below) in checks.items():
            v = getattr(self, key)
            if not ((v > above if above is not None else v >= 0) and (below is None or v < below)):
                bounds = "> 0" if above is not None else ">= 0" if below is None else "in [0, 1)"
                raise ValueError(f"{key} must be a number {bounds}, got {v!r}")
        for key, least in (("batch_real", 1), ("batch_syn", 0)):
            if getattr(self, key) < least:
                raise ValueError(f"{key} must be an integer >= {least}, got {getattr(self, key)!r}")


@register
class RaTBPTT(SoftLabels):
    """Meta-learned images (and labels) through a long inner unroll differentiated in a random window."""

    name = "ratbptt"
    family = "performance matching"
    paper = "Feng, Vedantam & Kempe, Embarrassingly Simple Dataset Distillation (RaT-BPTT), ICLR 2024"
    note = (
        "exact window gradient in bounded memory (one inner step rebuilt at a time); learned soft labels "
        "(softmax, shared with dd); no augmentation or ZCA by default; cpu preset: width-32 ConvNet, unroll "
        "150 / window 30, inner SGD as the evaluation recipe, real batch 256, image and label lr 0.01, 250 / 120 "
        "iterations at ipc 1 / 10"
    )
    default_iterations = 2000
    default_lr_img = 0.001
    options_type = RaTBPTTOptions
    opts: RaTBPTTOptions
    presets = {
        "quick": {
            "iterations": 40,
            "unroll": 30,
            "window": 10,
            "width": 16,
            "inner_optim": "sgd",
            "inner_lr": 0.01,
            "inner_wd": 5e-4,
            "batch_real": 128,
            "lr_img": 0.01,
            "lr_label": 0.01,
        },
        "cpu": {
            "iterations": {1: 250, 10: 120},
            "unroll": 150,
            "window": 30,
            "width": 32,
            "batch_syn": 20,  # ipc 10: 20 of the 100 images per inner step (ipc 1: all 10)
            "inner_optim": "sgd",
            "inner_lr": 0.01,
            "inner_wd": 5e-4,
            "batch_real": 256,
            "lr_img": 0.01,
            "lr_label": 0.01,
        },
    }

    def _validate(self, bundle: DatasetBundle) -> None:
        super()._validate(bundle)
        with_width(self.arch, self.opts.width, self.opts.normalization)  # refuses bad width / normalization

    def setup(self, bundle: DatasetBundle) -> None:
        o = self.opts
        self.init_targets()
        self.x_real, self.y_real = bundle.x_train.to(self.dev), bundle.y_train.to(self.dev)
        self.dsa = None if o.dsa in (None, "", "none") else DSA(o.dsa)
        wd = float(o.inner_wd)
        self.inner = with_width(self.arch, o.width, o.normalization)  # or members of --match-space
        self.inner_opt = InnerOptimizer(o.inner_optim, float(o.inner_lr), float(o.inner_momentum), wd)
        self.opt = torch.optim.Adam([{"params": [self.images], "lr": self.lr_img}, *self.label_groups()])
        self.grad_ema: float | None = None

    def step(self, it: int) -> float:
        o, n = self.opts, len(self.images)
        arch = self.inner_archs(it)[0]
        module = build(arch, self.bundle.channels, self.bundle.image_size, self.bundle.num_classes)
        module = module.to(self.dev)  # a fresh random initialisation (the base seeds every iteration)
        w0 = torch.cat([p.detach().flatten() for p in module.parameters()])
        n_pre = int(torch.randint(o.unroll - o.window + 1, ()))
        plan = make_plan(n, n_pre + o.window, min(o.batch_syn or n, n), self.dsa, self.dev)
        idx = torch.randint(len(self.x_real), (min(o.batch_real, len(self.x_real)),), device=self.dev)
        x_real = self.x_real[idx]
        if self.dsa is not None:
            x_real = self.dsa(x_real, int(torch.randint(2**31, ())))
        probs = self.target_probs() if o.learn_labels else self.targets
        leaf = probs.detach().requires_grad_(bool(o.learn_labels))
        real = (x_real, self.y_real[idx])
        loss, g_img, g_lab = window_grad(FlatNet(module), self.inner_opt, w0, self.images, leaf, plan, n_pre, real)
        self.opt.zero_grad(set_to_none=True)
        self.images.grad = self._clip(g_img)
        if g_lab is not None:
            probs.backward(g_lab)
        self.opt.step()
        sizes = [len(b) for b in plan.batches]
        self.count(sum(sizes[:n_pre]) + 3 * sum(sizes[n_pre:]) + len(idx))
        return loss

    def _clip(self, g: torch.Tensor) -> torch.Tensor:
        """Clip `g` to twice the moving average of the gradient norm (the paper's code)."""
        coef = self.opts.clip_ema
        if not coef:
            return g
        norm = float(g.norm())
        self.grad_ema = norm if self.grad_ema is None else coef * self.grad_ema + (1 - coef) * norm
        limit = 2 * self.grad_ema
        return g * (limit / norm) if norm > limit else g

    def extra_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "grad_ema": self.grad_ema}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.grad_ema = state["grad_ema"]
