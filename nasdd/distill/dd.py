"""Dataset Distillation by meta-learning (Wang, Zhu, Torralba & Efros, 2018): performance matching.

Each outer iteration draws a fresh random initialisation of the matching network, trains it
functionally (`torch.func.functional_call`) for `unroll_steps` full-batch gradient steps on the
synthetic set with learnable per-step learning rates, measures the cross-entropy of the trained
network on a random real batch, and back-propagates that loss through the whole unroll to the images
(and step sizes, and soft labels when learned). Resampling the initialisation every iteration is the
paper's "random initialisation" setting: the proxy must train any network from scratch.

`truncate` = T > 0 keeps the graph only for the last T inner steps (truncated back-propagation; the
earlier steps still train the network but pass no gradient); 0 back-propagates through all of them.

Learned step sizes: the K per-step rates are parametrised in log space and stored in the proxy's
provenance (`learned_step_lrs`). They belong to K full-batch plain-SGD steps of the narrow matching
network from a random init, not to the project's evaluation recipe (300 epochs of SGD with momentum
0.9 and step decay on the width-128 ConvNet), where they have no meaning: `learned_lr()` is therefore
None unless `export_lr` is set, in which case the proxy's lr is their mean (the trainer then uses it in
place of the recipe's lr with the recipe's momentum and schedule; measured worse, see the report).

Cost (sample-gradient evaluations): an inner step on N images is N; each kept step is counted twice
more for the meta-gradient (its double-backward pass), plus the real batch: N*(K + 2T) + B.
CPU deviations: the matching network is the project's ConvNet at `width` (default 32 instead of 128)
and `normalization` (default none: Wang et al. used LeNet, which has none; with instance norm the
meta-gradient was very rough in our finite-difference checks); the unroll is K full-batch steps
instead of 10 steps x 3 epochs of per-step batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from nasdd.data import DatasetBundle
from nasdd.distill.base import register
from nasdd.distill.options import at_least, positive
from nasdd.distill.proxy import ProxySet
from nasdd.distill.soft_labels import LabelOptions, SoftLabels, with_width
from nasdd.models import build


@dataclass(frozen=True)
class DDOptions(LabelOptions):
    """DD's options: inner steps K (`truncate`: differentiate only the last ones, 0 = all), their initial
    and learning rates, real batch, the narrowed matching ConvNet, whether the proxy keeps the learned lr."""

    unroll_steps: int = 10
    truncate: int = 0
    init_step_lr: float = 0.1
    lr_step_lr: float = 0.05
    batch_real: int = 256
    width: int | None = 32
    normalization: str | None = "none"
    export_lr: bool = False

    def check(self) -> None:
        super().check()
        at_least(self, 1, "unroll_steps")
        if not 0 <= self.truncate <= self.unroll_steps:
            raise ValueError(f"truncate must be an integer in [0, unroll_steps], got {self.truncate!r}")
        positive(self, "init_step_lr")


@register
class DatasetDistillation(SoftLabels):
    """Meta-learned images (and step sizes, optionally labels) through an unrolled inner training."""

    name = "dd"
    family = "performance matching"
    paper = "Wang, Zhu, Torralba & Efros, Dataset Distillation (arXiv 2018)"
    note = (
        "random inits resampled every iteration; K full-batch SGD steps with learned per-step lrs (kept in "
        "provenance; the eval recipe's lr is used unless export_lr); optional truncation and soft labels; "
        "matching ConvNet narrowed to width 32, no normalisation, for CPU"
    )
    default_iterations = 400
    default_lr_img = 0.01
    options_type = DDOptions
    opts: DDOptions
    presets = {
        "quick": {"iterations": 60, "unroll_steps": 5, "batch_real": 128},
        "cpu": {"iterations": 200, "batch_real": 128},
    }

    def setup(self, bundle: DatasetBundle) -> None:
        o = self.opts
        self.inner = with_width(self.arch, o.width, o.normalization)
        self.init_targets()
        self.log_lrs = torch.full((o.unroll_steps,), float(o.init_step_lr), device=self.dev).log()
        self.log_lrs.requires_grad_(True)
        self.x_real, self.y_real = bundle.x_train.to(self.dev), bundle.y_train.to(self.dev)
        groups = [{"params": [self.images], "lr": self.lr_img}, {"params": [self.log_lrs], "lr": o.lr_step_lr}]
        self.opt = torch.optim.Adam(groups + self.label_groups())

    def step(self, it: int) -> float:
        o, n = self.opts, len(self.images)
        k_steps = o.unroll_steps
        kept = o.truncate or k_steps
        arch = self.inner_archs(it)[0]
        net = build(arch, self.bundle.channels, self.bundle.image_size, self.bundle.num_classes).to(self.dev)
        params = {k: p.detach().requires_grad_(True) for k, p in net.named_parameters()}
        lrs = self.log_lrs.exp()
        targets = self.target_probs()
        for k in range(k_steps):
            keep = k >= k_steps - kept
            x, y = (self.images, targets) if keep else (self.images.detach(), targets.detach())
            loss = F.cross_entropy(functional_call(net, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=keep)
            if keep:
                params = {name: p - lrs[k] * g for (name, p), g in zip(params.items(), grads, strict=True)}
            else:
                step_lr = float(lrs[k].detach())
                params = {
                    name: (p - step_lr * g).detach().requires_grad_(True)
                    for (name, p), g in zip(params.items(), grads, strict=True)
                }
        idx = torch.randint(len(self.x_real), (o.batch_real,), device=self.dev)
        loss = F.cross_entropy(functional_call(net, params, (self.x_real[idx],)), self.y_real[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.count(n * (k_steps + 2 * kept) + o.batch_real)
        return float(loss.detach())

    def learned_lr(self) -> float | None:
        return float(self.log_lrs.detach().exp().mean()) if self.opts.export_lr else None

    def to_proxy(self) -> ProxySet:
        proxy = super().to_proxy()
        proxy.provenance["learned_step_lrs"] = [round(float(v), 6) for v in self.log_lrs.detach().exp()]
        return proxy

    def extra_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "log_lrs": self.log_lrs.detach().cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_lrs.copy_(state["log_lrs"].to(self.dev))
        self.opt.load_state_dict(state["opt"])
