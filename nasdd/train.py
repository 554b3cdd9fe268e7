"""The one trainer: every training in nasdd (proxy evaluation, search trials, ground truth, early
stopping, expert trajectories) goes through `fit` / `train_arch`.

It returns accuracy and loss on an evaluation split, wall seconds and machine-independent cost:
sample-gradient evaluations (one per sample per training step) and forward FLOPs per sample
(training FLOPs are estimated as 3x forward FLOPs per sample-gradient). A NaN or infinite loss ends
the training with a failed result instead of raising.

Fast path (`fast=True`, the default; `fast=False` is the plain loop, kept for benchmarks): on CPU a
batch is run forward and backward in chunks whose largest activation fits in cache (`CHUNK_BYTES`),
accumulating gradients; this is exact up to float rounding for models without batch statistics and is
skipped for models with BatchNorm. Models may be compiled with `torch.compile` (`compile_model`, or the
environment variable `NASDD_COMPILE=1`; off by default, see `nasdd.trainfast` for why).
A compilation that fails falls back to eager for that architecture, with a warning.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasdd.arch import ArchSpec
from nasdd.augment import make_augment
from nasdd.errors import NasddError
from nasdd.models import Classifier, build, forward_flops, param_count
from nasdd.trainfast import COMPILE_FAILED, chunk_size, compile_wanted, compiled, forward_backward, model_key
from nasdd.utils import progress, resolve_device, stable_hash


@dataclass(frozen=True)
class TrainRecipe:
    """How to train: length (epochs, or steps when given), batch, optimiser, schedule, augmentation.

    `schedule`: `step` multiplies the lr by 0.1 at half of training (the DC evaluation recipe),
    `cosine` anneals to 0, `constant` keeps it. `augment`: none, `dsa`, or `dsa:<ops>`.
    """

    epochs: int = 300
    steps: int | None = None
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    augment: str | None = None
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise NasddError(f"unknown optimizer {self.optimizer!r}; valid optimizers: sgd, adam")
        if self.schedule not in ("step", "cosine", "constant"):
            raise NasddError(f"unknown schedule {self.schedule!r}; valid schedules: step, cosine, constant")
        if self.epochs < 0 or (self.steps is not None and self.steps < 0) or self.batch_size < 1:
            raise NasddError("epochs and steps must be >= 0 and batch_size >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NasddError(f"learning rate must be a positive finite number, got {self.lr}")
        make_augment(self.augment)  # validates the name

    def key(self) -> str:
        return stable_hash(asdict(self), 12)

    def total_steps(self, n: int) -> int:
        if self.steps is not None:
            return self.steps
        return self.epochs * math.ceil(n / self.batch_size)

    @classmethod
    def parse(cls, text: str | None, base: TrainRecipe | str | None = None) -> TrainRecipe:
        """`"proxy"`, `"full,epochs=5"` or `"epochs=50,lr=0.02"`: a preset name and/or key=value overrides of
        `base` (a recipe or a preset name; default the dataclass defaults)."""
        recipe = cls.parse(base) if isinstance(base, str) else base or cls()
        if not text:
            return recipe
        types = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}  # each key's value has that field's type (`_coerce`)
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                recipe = RECIPES[part] if part in RECIPES else _unknown_recipe(part)
                continue
            k, v = (s.strip() for s in part.split("=", 1))
            if k not in types:
                raise NasddError(f"unknown recipe key {k!r}; valid keys: {', '.join(types)}")
            changes[k] = _coerce(k, v, str(types[k]))
        return replace(recipe, **changes)


def _unknown_recipe(name: str) -> TrainRecipe:
    raise NasddError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)} or key=value pairs")


def _coerce(key: str, value: str, typ: str) -> int | float | str | None:
    if value.lower() in ("none", "null", ""):
        if "None" not in typ:
            raise NasddError(f"recipe key {key} needs a value, got {value!r}")
        return None
    try:
        if typ.startswith("int"):
            return int(value)
        if typ.startswith("float"):
            return float(value)
    except ValueError:
        raise NasddError(f"recipe key {key} expects a number, got {value!r}") from None
    return value


RECIPES: dict[str, TrainRecipe] = {
    # Training on a distilled proxy: the DC/DM evaluation recipe (SGD 0.01, momentum 0.9, wd 5e-4,
    # lr x0.1 at half), shortened from 1000 to 300 epochs for CPU.
    "proxy": TrainRecipe(epochs=300, batch_size=256, lr=0.01),
    # Full-data training (ground truth, `--proxy full`): a few epochs suffice on the small sets here.
    "full": TrainRecipe(epochs=8, batch_size=64, lr=0.01, schedule="cosine"),
}


def with_learned_lr(recipe: TrainRecipe, lr: float | None) -> TrainRecipe:
    """The recipe to train on a proxy: its learned learning rate `lr` (MTT, RaT-BPTT) replaces the recipe's;
    `recipe` unchanged when the proxy has none (`None`: most methods, and `full`)."""
    return replace(recipe, lr=lr) if lr is not None else recipe


SYNC_EVERY = 32  # CUDA steps between host syncs for the non-finite-loss check


@dataclass
class TrainResult:
    """What one training produced; `status` is `ok` or `failed` (with `error`)."""

    accuracy: float = float("nan")
    loss: float = float("nan")
    train_loss: float = float("nan")
    seconds: float = 0.0
    sample_grads: int = 0
    eval_samples: int = 0
    flops_per_sample: int = 0
    params: int = 0
    steps: int = 0
    status: str = "ok"
    error: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # per-step training loss, with `Monitor(record_losses=True)`

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def train_flops(self) -> int:
        """Estimated training FLOPs: forward + backward ~ 3x forward, per sample-gradient."""
        return 3 * self.flops_per_sample * self.sample_grads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train_flops"] = self.train_flops
        return d


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 1024,
    fast: bool = True,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on (x, y); y hard labels.

    `fast`: under `torch.inference_mode`, in cache-sized batches on CPU (eval mode is per-sample: exact).
    """
    device = resolve_device(device)
    if fast:
        batch_size = chunk_size(model, tuple(x.shape[1:]), batch_size, device, per_sample=True)
    with torch.inference_mode() if fast else torch.no_grad():
        return _evaluate(model, x, y, device, batch_size)


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int
) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(x), batch_size):  # sums stay on the device: one host sync at the end
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb)
        total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(x), 1)
    return int(correct) / n, float(total_loss) / n


def _lr_at(recipe: TrainRecipe, step: int, total: int) -> float:
    if recipe.schedule == "step":
        return recipe.lr * (0.1 if step >= total // 2 else 1.0)
    if recipe.schedule == "cosine":
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    return recipe.lr


def _optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


@dataclass(frozen=True)
class Monitor:
    """What `fit` watches and reports while it trains (everything off by default).

    `eval_every` > 0: accuracy on `fit`'s `eval_data` every that many epochs (or steps with `recipe.steps`),
    kept in `TrainResult.history`; `on_eval(index, accuracy)` is called after each and may raise (e.g.
    optuna.TrialPruned). `on_checkpoint(state)` is called at every such evaluation that falls on an epoch
    boundary, before `on_eval`, with a copy of the training's state (weights, optimizer, data order, cost);
    `fit(model, ..., resume=state)` continues that training exactly, so a training can be stopped and
    extended later. `record_losses`: keep every step's mean training-batch loss in `TrainResult.losses`
    (the training-speed scores of `nasdd.validate.scoring` sum them; one host sync per step on CUDA).
    `progress`: the label of a progress bar over the steps, None for no bar.
    """

    eval_every: int = 0
    on_eval: Callable[[int, float], None] | None = None
    on_checkpoint: Callable[[dict], None] | None = None
    record_losses: bool = False
    progress: str | None = None


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: TrainRecipe,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    monitor: Monitor = Monitor(),  # frozen: one shared default is safe
    resume: dict | None = None,
    fast: bool = True,
    compile_model: bool | None = None,
) -> TrainResult:
    """Train `model` in place on (x, y) — y long class ids or a float [N, K] soft-label matrix.

    With `eval_data`, accuracy is measured at the end and, as `monitor` asks, during training.
    `resume`: a state `monitor.on_checkpoint` was given; the training continues from it.
    `fast=False` runs the plain loop (whole batches, eager, no_grad evaluation); `compile_model` is
    True/False, or None for `NASDD_COMPILE` (0 or 1, default 0). Both change results only by float rounding.
    """
    device = resolve_device(device)
    model.to(device)
    shape = image_shape(x)
    res = TrainResult(params=param_count(model), flops_per_sample=forward_flops(model, shape))
    if len(x) == 0:
        raise NasddError("cannot train on an empty set")
    gen = torch.Generator().manual_seed(seed)
    augment = make_augment(recipe.augment)
    opt = _optimizer(model, recipe)
    x, y = x.to(device), y.to(device)
    n, bs = len(x), min(recipe.batch_size, len(x))
    per_epoch = math.ceil(n / bs)
    total = recipe.total_steps(n)
    chunk = chunk_size(model, shape, bs, device) if fast else bs
    fwd: Callable[[torch.Tensor], torch.Tensor] = model
    key = model_key(model, shape) if fast and compile_wanted(compile_model) else ""
    if key and key not in COMPILE_FAILED:
        fwd = compiled(model)
    ev = functools.partial(evaluate, device=device, batch_size=recipe.eval_batch_size, fast=fast)
    step, start = 0, time.perf_counter()
    if resume is not None:
        step = _resume(resume, model, opt, gen, res, per_epoch)
    bar = progress(total=total, initial=step, desc=monitor.progress or "", disable=monitor.progress is None)
    # On CUDA the finiteness check (a host sync) runs every SYNC_EVERY steps; elsewhere every step.
    check_every = SYNC_EVERY if device.type == "cuda" else 1
    bad: torch.Tensor | None = None  # on the device: was any loss so far non-finite?
    last_loss: torch.Tensor | None = None
    model.train()
    while step < total:
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(per_epoch):
            if step >= total:
                break
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, int(torch.randint(2**31, (1,), generator=gen)))
            for group in opt.param_groups:
                group["lr"] = _lr_at(recipe, step, total)
            opt.zero_grad(set_to_none=True)
            try:
                loss = forward_backward(fwd, model, xb, yb, chunk)
            except Exception as exc:  # a failed compilation: this architecture trains eager from here on
                if fwd is model:
                    raise
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); training eager", stacklevel=2)
                COMPILE_FAILED.add(key)
                fwd = model
                opt.zero_grad(set_to_none=True)
                loss = forward_backward(fwd, model, xb, yb, chunk)
            nonfinite = ~torch.isfinite(loss)
            bad = nonfinite if bad is None else bad | nonfinite
            if (step % check_every == 0 or step == total - 1) and bool(bad):
                res.status, res.error = "failed", f"non-finite training loss ({float(loss)}) by step {step}"
                break
            opt.step()
            res.sample_grads += len(idx)
            last_loss = loss
            if monitor.record_losses:
                res.losses.append(float(loss))
            step += 1
            bar.update(1)
            unit = step if recipe.steps is not None else (step // per_epoch if step % per_epoch == 0 else 0)
            every = monitor.eval_every
            if eval_data is not None and every and unit and unit % every == 0 and step < total:
                acc, _ = ev(model, *eval_data)
                res.eval_samples += len(eval_data[0])
                res.history.append((unit, acc))
                if monitor.on_checkpoint is not None and step % per_epoch == 0:
                    monitor.on_checkpoint(_checkpoint(model, opt, gen, res, step))
                if monitor.on_eval is not None:
                    monitor.on_eval(unit, acc)
        if res.status == "failed":
            break
    bar.close()
    res.steps = step
    if last_loss is not None:
        res.train_loss = float(last_loss)
    if res.ok and eval_data is not None:
        res.accuracy, res.loss = ev(model, *eval_data)
        res.eval_samples += len(eval_data[0])
        if not math.isfinite(res.loss):
            res.status, res.error = "failed", "non-finite evaluation loss"
    res.seconds = time.perf_counter() - start
    return res


def _checkpoint(
    model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, res: TrainResult, step: int
) -> dict:
    """What `fit` needs to continue a training from an epoch boundary: copies, as training goes on in place."""
    return copy.deepcopy(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": step,
         "sample_grads": res.sample_grads}
    )  # fmt: skip


def _resume(
    state: dict, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, res: TrainResult, per_epoch: int
) -> int:
    if state["step"] % per_epoch:
        raise NasddError(f"a training resumes only at an epoch boundary, not at step {state['step']}")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    res.sample_grads = int(state["sample_grads"])
    return int(state["step"])


def image_shape(x: torch.Tensor) -> tuple[int, int, int]:
    """(channels, height, width) of a batch of images [N, C, H, W]."""
    c, h, w = x.shape[1:]
    return c, h, w


def build_seeded(spec: ArchSpec, shape: tuple[int, int, int], num_classes: int, seed: int) -> Classifier:
    """Build a model whose initial weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(spec, shape[0], shape[1], num_classes)


def train_arch(
    spec: ArchSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: TrainRecipe,
    *,
    num_classes: int,
    seed: int = 0,
    device: str | torch.device = "auto",
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    monitor: Monitor = Monitor(),  # frozen: one shared default is safe
    compile_model: bool | None = None,
) -> TrainResult:
    """Build `spec` with weights seeded by `seed`, then `fit` it. Build errors become failed results."""
    try:
        model = build_seeded(spec, image_shape(x), num_classes, seed)
    except (RuntimeError, ValueError) as exc:
        return TrainResult(status="failed", error=f"cannot build {spec}: {exc}")
    return fit(
        model, x, y, recipe, seed=seed, device=device, eval_data=eval_data, monitor=monitor, compile_model=compile_model
    )
