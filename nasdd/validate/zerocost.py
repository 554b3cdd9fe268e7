"""Zero-cost scores: rank an architecture at initialisation, without training (higher = predicted better).

- `synflow` (Tanaka et al. 2020, as a NAS score by Abdelfattah et al. 2021): parameters replaced by
  their absolute values, an all-ones input in float64, R = sum of the outputs; score = sum over conv and
  linear weights of |theta * dR/dtheta|. The model is in eval mode, so batch norm uses its initial
  statistics (identity); per-sample normalisations (instance/layer/group norm) flatten a constant input,
  so those members score 0 — a known weakness of synflow, kept as is.
- `naswot` (Mellor et al. 2021, "jacob_cov"/NASWOT score): binary codes of every ReLU-like unit
  (pre-activation > 0; for sigmoid that is output > 0.5) over a batch; K = c c^T + (1-c)(1-c)^T, i.e.
  N_units minus Hamming distance; score = log|K|. Deviation: a jitter of 1e-6 x mean(diag K) keeps the
  log-determinant finite when two inputs share a code (the paper's code gives -inf).
- `grad_norm` (Abdelfattah et al. 2021): sum over conv/linear layers of the L2 norm of dCE/dW on a batch.
- `snip` (Lee et al. 2019, as a NAS score by Abdelfattah et al. 2021): sum over conv/linear weights of
  |W * dCE/dW| on a batch.
- `params`, `flops`: parameter count and forward FLOPs per sample (bigger = predicted better).

Batch-based scores use one seeded batch of real training images with the model in train mode; the
cost reported is wall seconds plus sample-gradient evaluations (batch size for backward-based scores).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.models import forward_flops, param_count
from nasdd.registry import Registry
from nasdd.train import build_seeded, image_shape
from nasdd.utils import resolve_device

# a scorer takes (model, x, y) and returns (score, sample-gradient evaluations)
Scorer = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[float, int]]
SCORES: Registry[Scorer] = Registry("zero-cost score")
DESCRIPTIONS: dict[str, str] = {}


def _register(name: str, description: str) -> Callable[[Scorer], Scorer]:
    DESCRIPTIONS[name] = description
    return SCORES.register(name)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _total(tensors: list[torch.Tensor]) -> float:
    """Sum on the device, one host transfer."""
    return float(torch.stack([t.detach().double() for t in tensors]).sum()) if tensors else 0.0


@_register("synflow", "SynFlow at initialisation: data-free path-norm saliency (Tanaka 2020; Abdelfattah 2021)")
def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    model = model.double().eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    model.zero_grad()
    # two identical all-ones rows (R = their mean): a batch of one cannot pass a 1x1 instance norm
    model(torch.ones(2, *x.shape[1:], dtype=torch.float64, device=x.device)).sum().div(2).backward()
    score = _total([(w * w.grad).abs().sum() for w in _weights(model) if w.grad is not None])
    return score, 1


@_register("naswot", "NASWOT / jacob_cov: log-determinant of the ReLU activation-code kernel (Mellor 2021)")
def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    n = len(x)
    kernel = torch.zeros(n, n, dtype=torch.float64, device=x.device)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        c = (inputs[0].detach().reshape(n, -1) > 0).double()
        kernel.add_(c @ c.T + (1 - c) @ (1 - c).T)

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU | nn.LeakyReLU | nn.Sigmoid)
    ]
    try:
        with torch.no_grad():
            model.train()(x)
    finally:
        for h in handles:
            h.remove()
    jitter = 1e-6 * max(float(kernel.diagonal().mean()), 1.0)
    return float(torch.linalg.slogdet(kernel + jitter * torch.eye(n, dtype=kernel.dtype, device=x.device))[1]), 0


def _batch_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    model.train().zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [(w, w.grad if w.grad is not None else torch.zeros_like(w)) for w in _weights(model)]


@_register("grad_norm", "sum of per-layer gradient norms of the loss at initialisation (Abdelfattah 2021)")
def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    return _total([g.norm() for _, g in _batch_grads(model, x, y)]), len(x)


@_register("snip", "SNIP connection sensitivity |W * dL/dW| summed (Lee 2019; Abdelfattah 2021)")
def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    return _total([(w * g).abs().sum() for w, g in _batch_grads(model, x, y)]), len(x)


@_register("params", "number of parameters (bigger ranks higher)")
def params(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    return float(param_count(model)), 0


@_register("flops", "forward FLOPs per sample (bigger ranks higher)")
def flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    return float(forward_flops(model, image_shape(x))), 0


@dataclass(frozen=True)
class ZeroCostResult:
    score: float
    seconds: float
    sample_grads: int

    def to_dict(self) -> dict:
        return {"score": self.score, "seconds": self.seconds, "sample_grads": self.sample_grads}


def score_batch(bundle: DatasetBundle, batch_size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded batch of real training images (the same for every architecture)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(bundle.y_train), generator=g)[:batch_size]
    return bundle.x_train[idx], bundle.y_train[idx]


def zero_cost(
    name: str,
    spec: ArchSpec,
    bundle: DatasetBundle,
    *,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "auto",
) -> ZeroCostResult:
    """Score `spec` (weights initialised by `seed`) with the zero-cost score `name`."""
    scorer = SCORES.get(name)
    device = resolve_device(device)
    x, y = score_batch(bundle, batch_size, seed)
    start = time.perf_counter()
    model = build_seeded(spec, image_shape(x), bundle.num_classes, seed).to(device)
    score, grads = scorer(model, x.to(device), y.to(device))
    return ZeroCostResult(score, time.perf_counter() - start, grads)


def catalog() -> list[tuple[str, str]]:
    return [(n, DESCRIPTIONS[n]) for n in SCORES.names()]
