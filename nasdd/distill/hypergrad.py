"""Implicit-function-theorem hypergradients with a Neumann-series inverse Hessian (Lorraine et al. 2020).

For weights w*(lam) that minimise a training loss L_T(w, lam), the hypergradient of a validation loss
L_V(w*(lam), lam) is (Lorraine, Vicol & Duvenaud, AISTATS 2020, Theorem 1, Cauchy's implicit function
theorem; HCDC computes its hypergradients the same way, per its abstract):

    dL_V/dlam = dL_V/dlam|_direct - (dL_V/dw) [d2L_T/dw dw^T]^-1 d2L_T/dw dlam^T

and the inverse-Hessian-vector product is the truncated Neumann series of their Algorithm 3,

    H^-1 v ~= alpha * sum_{j=0..K} (I - alpha H)^j v,

which converges to H^-1 v when 0 < alpha < 2 / lambda_max(H) and H is positive definite.

Memory is bounded: the first derivatives of L_T are built once with a graph (`InnerProblem`), every
Hessian-vector product (`hvp`), mixed product (`jt`: J^T p, `j`: J g with J = d2L_T/dw dlam^T) is one
more backward through that same graph, and nothing accumulates across the K Neumann steps.

Tensors here are flat: `w` the network weights as one vector, `lam` the hyperparameters as one vector.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import autograd


class InnerProblem:
    """First derivatives of the training loss `loss_fn(w, lam)` at (w, lam), kept with their graph so
    that Hessian-vector and mixed second-derivative products are one backward each."""

    def __init__(
        self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], w: torch.Tensor, lam: torch.Tensor
    ):
        self.w = w.detach().requires_grad_(True)
        self.lam = lam.detach().requires_grad_(True)
        loss = loss_fn(self.w, self.lam)
        self.g_w, self.g_lam = autograd.grad(loss, (self.w, self.lam), create_graph=True)
        self.products = 0  # second-order products taken (each ~ two backward passes over the batch)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v, H = d2L_T/dw dw^T."""
        self.products += 1
        return autograd.grad(self.g_w, self.w, v, retain_graph=True)[0].detach()

    def jt(self, p: torch.Tensor) -> torch.Tensor:
        """J^T p (a lam-sized vector), J = d2L_T/dw dlam^T: d/dlam of (dL_T/dw . p)."""
        self.products += 1
        return autograd.grad(self.g_w, self.lam, p, retain_graph=True, allow_unused=True)[0].detach()

    def j(self, g: torch.Tensor) -> torch.Tensor:
        """J g (a w-sized vector): d/dw of (dL_T/dlam . g)."""
        self.products += 1
        return autograd.grad(self.g_lam, self.w, g, retain_graph=True, allow_unused=True)[0].detach()


def neumann_ihvp(
    hvp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, alpha: float, steps: int
) -> torch.Tensor:
    """alpha * sum_{j=0..steps} (I - alpha H)^j v (Lorraine et al. 2020, Algorithm 3)."""
    p, cur = v.clone(), v.clone()
    for _ in range(steps):
        cur = cur - alpha * hvp(cur)
        p = p + cur
    return alpha * p


def hypergradient(
    inner: InnerProblem, d_w: torch.Tensor, d_lam: torch.Tensor, alpha: float, steps: int
) -> torch.Tensor:
    """dL_V/dlam from the validation loss's direct derivatives (`d_w` = dL_V/dw, `d_lam` = dL_V/dlam)."""
    p = neumann_ihvp(inner.hvp, d_w, alpha, steps)
    return d_lam - inner.jt(p)


def exact_hypergradient(inner: InnerProblem, d_w: torch.Tensor, d_lam: torch.Tensor) -> torch.Tensor:
    """The same with the exact inverse Hessian (the full Hessian built column by column; tests only)."""
    n = inner.w.numel()
    eye = torch.eye(n, dtype=inner.w.dtype, device=inner.w.device)
    h = torch.stack([inner.hvp(eye[i]) for i in range(n)])
    return d_lam - inner.jt(torch.linalg.solve(h, d_w))
