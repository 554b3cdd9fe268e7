"""Several seeds of one architecture trained in one batched pass (`torch.func`: stacked weights + vmap).

`fit_seeds(spec, x, y, recipe, seeds=[0, 1, 2], ...)` gives, per seed, what `train_arch(..., seed=s)`
gives up to float rounding: the same initial weights (`build_seeded`), the same batch order and
augmentation draws (one generator per seed, drawn in `fit`'s order), the same learning-rate schedule.
SGD and Adam act element-wise, so one optimiser over the stacked weights updates every seed as its own
optimiser would. Norm layers: GroupNorm/instance norm and LayerNorm are per-sample and vmap as they are;
BatchNorm's running statistics are stacked buffers, one per seed, updated in place under vmap.
`seconds` of each result is the batched wall time divided by the number of seeds.

Where it pays: one kernel per layer for all seeds helps when a single model leaves the device idle
(CUDA, small models, small batches). On one CPU thread the work is the same FLOPs in grouped form
(see results/train_throughput.csv for the measured ratio).
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from nasdd.arch import ArchSpec
from nasdd.augment import make_augment
from nasdd.errors import NasddError
from nasdd.models import forward_flops, param_count
from nasdd.train import SYNC_EVERY, TrainRecipe, TrainResult, _lr_at, build_seeded, evaluate, image_shape
from nasdd.utils import resolve_device


def _optimizer(params: list[torch.Tensor], recipe: TrainRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def fit_seeds(
    spec: ArchSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: TrainRecipe,
    *,
    num_classes: int,
    seeds: list[int],
    device: str | torch.device = "auto",
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[TrainResult]:
    """Train `spec` once per seed, all seeds in one vmapped pass; one TrainResult per seed, in order."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise NasddError(f"fit_seeds needs distinct seeds, got {seeds}")
    if len(x) == 0:
        raise NasddError("cannot train on an empty set")
    device = resolve_device(device)
    shape = image_shape(x)
    models = [build_seeded(spec, shape, num_classes, s).to(device) for s in seeds]
    flops = forward_flops(models[0], shape)
    results = [TrainResult(params=param_count(models[0]), flops_per_sample=flops) for _ in seeds]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss_one(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    batched_loss = vmap(loss_one)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    augment = make_augment(recipe.augment)
    opt = _optimizer(list(params.values()), recipe)
    x, y = x.to(device), y.to(device)
    n, bs = len(x), min(recipe.batch_size, len(x))
    per_epoch, total = math.ceil(n / bs), recipe.total_steps(n)
    check_every = SYNC_EVERY if device.type == "cuda" else 1
    bad = torch.zeros(len(seeds), dtype=torch.bool, device=device)  # per seed: any non-finite loss so far?
    failed_at: list[int | None] = [None] * len(seeds)
    losses = torch.full((len(seeds),), float("nan"), device=device)
    step, start = 0, time.perf_counter()
    base.train()
    while step < total:
        perms = [torch.randperm(n, generator=g).to(device) for g in gens]
        for i in range(min(per_epoch, total - step)):
            idx = [p[i * bs : (i + 1) * bs] for p in perms]
            xb = [x[j] for j in idx]
            if augment is not None:
                xb = [augment(b, int(torch.randint(2**31, (1,), generator=g))) for b, g in zip(xb, gens, strict=True)]
            for group in opt.param_groups:
                group["lr"] = _lr_at(recipe, step, total)
            opt.zero_grad(set_to_none=True)
            out = batched_loss(params, buffers, torch.stack(xb), torch.stack([y[j] for j in idx]))
            out.sum().backward()  # the seeds' losses are independent: each gets its own gradient
            opt.step()
            losses = torch.where(bad, losses, out.detach())
            bad |= ~torch.isfinite(out.detach())
            step += 1
            if step % check_every == 0 or step == total:
                for s, flag in enumerate(bad.tolist()):
                    if flag and failed_at[s] is None:
                        failed_at[s] = step
        if all(f is not None for f in failed_at):
            break
    seconds = (time.perf_counter() - start) / len(seeds)
    state = {**params, **buffers}
    for s, (model, res, failed) in enumerate(zip(models, results, failed_at, strict=True)):
        model.load_state_dict({k: v[s].detach() for k, v in state.items()})
        res.steps = step if failed is None else failed - 1  # up to its first non-finite loss
        res.sample_grads = sum(min(bs, n - (i % per_epoch) * bs) for i in range(res.steps))
        res.train_loss, res.seconds = float(losses[s]), seconds
        _finish(res, model, failed, eval_data, recipe, device)
    return results


def _finish(
    res: TrainResult,
    model: torch.nn.Module,
    failed_at: int | None,
    eval_data: tuple[torch.Tensor, torch.Tensor] | None,
    recipe: TrainRecipe,
    device: torch.device,
) -> None:
    """Fill one seed's status and evaluation as `fit` would (failed at its first non-finite loss, if any)."""
    if failed_at is not None:
        res.status, res.error = "failed", f"non-finite training loss by step {failed_at - 1}"
        return
    if eval_data is not None:
        res.accuracy, res.loss = evaluate(model, *eval_data, device=device, batch_size=recipe.eval_batch_size)
        res.eval_samples = len(eval_data[0])
        if not math.isfinite(res.loss):
            res.status, res.error = "failed", "non-finite evaluation loss"
