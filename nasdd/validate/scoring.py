"""Scoring recipes: what a candidate's cheap score is, as one typed, serialisable object with a stable key.

A `ScoringRecipe` says how a candidate is trained at a budget (a fraction of one truth training, in
sample-gradients), on how many real training images (the split of the budget between images and passes),
with which learning rate and batch, whether BatchNorm statistics are re-estimated before scoring, and
which number of the run becomes the score. Every score is "higher is better".

Score kinds (all read from one training run, so a grid of kinds costs one training):

- `val_acc`: accuracy on the real val split at the end (what the audit used so far).
- `val_loss`: minus the val cross-entropy at the end.
- `tse`: minus the sum of the training-batch losses over the whole run, "training speed estimation"
  (Ru, Lyle, Schut, Fil, van der Wilk, Gal, "Speedy Performance Estimation for Neural Architecture
  Search", NeurIPS 2021, TSE).
- `tse_ema`: minus the exponentially weighted sum sum_t gamma^(T-t) loss_t, gamma = `EMA_GAMMA` per step
  (Ru et al. 2021, TSE-EMA; they weight per epoch, our runs are shorter than an epoch, so per step).
- `tse_late`: minus the sum over the second half of the steps (Ru et al.'s TSE-E, E = half the run).
- `curve`: the val-accuracy learning curve (`CURVE_POINTS` evaluations on `curve_images` val images)
  fitted by the power law a - b t^(-c) and extrapolated to the truth training's length (the pow3
  model of Domhan, Springenberg, Hutter, IJCAI 2015; LC-PFN, Adriaensen et al. NeurIPS 2023, is the
  learned form of the same idea); the last point when the fit fails.
- `curve_auc`: the mean of those curve points (area under the val curve, a validation form of TSE).

BatchNorm re-estimation (`bn_images` > 0): after training, the running statistics of every BatchNorm
layer are recomputed as a plain average over forward passes of that many real training images (PreciseBN,
Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; DC's evaluation avoids BatchNorm for the same
reason: a short or tiny-set training leaves poor running statistics). Weights are untouched.

Cost: the training's sample-gradients, plus forward passes (BN re-estimation and the curve's val
evaluations) counted as 1/3 of a sample-gradient each (forward is a third of forward+backward, the cost
model of `nasdd.train`). The training gets the budget minus that overhead (`train_grads`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.errors import NasddError
from nasdd.train import Monitor, TrainRecipe, build_seeded, evaluate, fit, image_shape
from nasdd.utils import resolve_device, stable_hash

SCORE_KINDS = ("val_acc", "val_loss", "tse", "tse_ema", "tse_late", "curve", "curve_auc")
EMA_GAMMA = 0.99
CURVE_POINTS = 4
FORWARD_COST = 1 / 3  # one forward pass in sample-gradients
SUBSET_SEED = 0  # the real-image subset is the same for every candidate (like the random-subset peer)


@dataclass(frozen=True)
class ScoringRecipe:
    """How a candidate is scored; `key()` is stable across processes. Parse once at the boundary.

    `passes`: epochs over the chosen images; 0 trains on every training image (early stopping), else
    the budget buys `images = train_grads / passes` real images (a stratified subset). `space` and
    `dataset_key` pin a calibrated recipe; `calibrated_on` names the table and members it was chosen on.
    """

    budget: float = 1 / 30
    passes: float = 0.0
    lr: float = 0.02
    batch_size: int = 128
    bn_images: int = 0
    curve_images: int = 0
    score: str = "val_acc"
    space: str | None = None
    dataset_key: str | None = None
    calibrated_on: str = ""
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.score not in SCORE_KINDS:
            raise NasddError(f"unknown score kind {self.score!r}; valid kinds: {', '.join(SCORE_KINDS)}")
        if not 0 < self.budget <= 1:
            raise NasddError(f"a scoring budget is a fraction of one truth training in (0, 1], got {self.budget}")
        if self.passes < 0 or self.bn_images < 0 or self.curve_images < 0 or self.batch_size < 1:
            raise NasddError("passes, bn_images and curve_images must be >= 0 and batch_size >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NasddError(f"a scoring lr must be a positive finite number, got {self.lr}")
        if self.score.startswith("curve") and self.curve_images < 1:
            raise NasddError(f"score {self.score!r} needs curve_images > 0 (the val images of the curve)")

    def key(self) -> str:
        return stable_hash(asdict(self), 12)

    def training_key(self) -> str:
        """What the training run depends on (not the score kind, nor BN handling, nor the pins)."""
        d = {k: getattr(self, k) for k in ("budget", "passes", "lr", "batch_size", "curve_images")}
        return stable_hash(d, 12)

    def overhead_grads(self, bn_images: int | None = None) -> float:
        """Forward-pass overhead (BN re-estimation, curve evaluations) in sample-gradients."""
        bn = self.bn_images if bn_images is None else bn_images
        return FORWARD_COST * (bn + CURVE_POINTS * self.curve_images)

    def train_grads(self, truth_grads: float, bn_images: int | None = None) -> float:
        """Sample-gradients left for training after the overhead, at this budget of a `truth_grads` truth."""
        left = self.budget * truth_grads - self.overhead_grads(bn_images)
        if left < 1:
            raise NasddError(f"the scoring overhead ({self.overhead_grads(bn_images):.0f}) exceeds the budget")
        return left

    # -- files ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        d["members"] = list(self.members)
        return json.dumps({"scoring_recipe": d, "key": self.key()}, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ScoringRecipe:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise NasddError(f"unknown scoring recipe fields {unknown}; valid fields: {', '.join(sorted(names))}")
        d = dict(d)
        d["members"] = tuple(d.get("members", ()))
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from nasdd.utils import atomic_open

        with atomic_open(path) as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ScoringRecipe:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            recipe = cls.from_dict(d["scoring_recipe"])
        except FileNotFoundError:
            raise NasddError(f"scoring recipe file {path} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise NasddError(f"{path} is not a scoring recipe file ({type(exc).__name__}: {exc})") from None
        if d.get("key") not in (None, recipe.key()):
            raise NasddError(f"{path}: the recipe's key {d.get('key')} does not match its fields (edited by hand?)")
        return recipe

    def check(self, *, space: str, dataset_key: str) -> None:
        """Refuse, in one line, a recipe calibrated for another space or dataset."""
        if self.space is not None and self.space != space:
            raise NasddError(f"this scoring recipe was calibrated for space {self.space!r}, not {space!r}")
        if self.dataset_key is not None and self.dataset_key != dataset_key:
            raise NasddError(f"this scoring recipe was calibrated for dataset {self.dataset_key}, not {dataset_key}")

    def refuse_members(self, keys: list[str]) -> None:
        """A recipe is never scored on the members it was calibrated on."""
        seen = sorted(set(keys) & set(self.members))
        if seen:
            raise NasddError(f"{len(seen)} members (e.g. {seen[0]}) were used to calibrate this recipe; leave them out")


# -- BatchNorm ---------------------------------------------------------------------------------------
def reestimate_bn(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> int:
    """Recompute every BatchNorm layer's running mean/var as the average over batches of `x` (PreciseBN).

    Only BatchNorm buffers change; the model's train/eval mode is restored. Returns the forward passes
    spent (0 when the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or len(x) == 0:
        return 0
    was_training, momenta = model.training, [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch weighs the same
    model.train()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(device))
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return len(x)


# -- score kinds -------------------------------------------------------------------------------------
def tse(losses: list[float]) -> float:
    return -float(np.sum(losses))


def tse_ema(losses: list[float], gamma: float = EMA_GAMMA) -> float:
    t = len(losses)
    w = gamma ** np.arange(t - 1, -1, -1, dtype=float)
    return -float(np.dot(w, losses))


def tse_late(losses: list[float]) -> float:
    return -float(np.sum(losses[len(losses) // 2 :]))


def curve_extrapolate(points: list[tuple[float, float]], horizon: float) -> float:
    """Power law a - b t^(-c) through (t, acc) points, evaluated at `horizon`; the last acc if it fails."""
    from scipy.optimize import curve_fit

    t = np.array([p[0] for p in points], float)
    a = np.array([p[1] for p in points], float)
    if len(t) < 3 or not np.all(np.isfinite(a)):
        return float(a[-1]) if len(a) else math.nan
    ts = t / t[-1]
    try:
        with np.errstate(all="ignore"):
            (pa, pb, pc), _ = curve_fit(
                lambda x, p, q, r: p - q * x ** (-r), ts, a, p0=(min(1.0, a[-1] + 0.05), 0.05, 0.5),
                bounds=([0.0, -1.0, 0.0], [1.0, 1.0, 3.0]), maxfev=2000,
            )  # fmt: skip
        v = float(pa - pb * (horizon / t[-1]) ** (-pc))
    except (RuntimeError, ValueError):
        return float(a[-1])
    return v if math.isfinite(v) else float(a[-1])


def score_of(record: dict, kind: str, bn: bool) -> float:
    """The score of `kind` from one cached training record (see `train_member`)."""
    if record.get("status") != "ok":
        return math.nan
    final = record["final_bn"] if bn and record.get("has_bn") else record["final"]
    if kind == "val_acc":
        return final["acc"]
    if kind == "val_loss":
        return -final["loss"]
    losses = record["losses"]
    if kind == "tse":
        return tse(losses)
    if kind == "tse_ema":
        return tse_ema(losses)
    if kind == "tse_late":
        return tse_late(losses)
    pts = [tuple(p) for p in record["curve"]]
    if kind == "curve":
        return curve_extrapolate(pts, record["horizon"])
    if kind == "curve_auc":
        return float(np.mean([p[1] for p in pts]))
    raise NasddError(f"unknown score kind {kind!r}; valid kinds: {', '.join(SCORE_KINDS)}")


def score(record: dict, recipe: ScoringRecipe) -> float:
    return score_of(record, recipe.score, recipe.bn_images > 0)


def spent_grads(record: dict) -> int:
    """What one training record cost in sample-gradients: its training plus its forward passes (BN
    re-estimation, curve evaluations) at `FORWARD_COST` each."""
    forwards = record.get("bn_forwards", 0) + record.get("curve_forwards", 0)
    return int(record.get("sample_grads", 0) + forwards * FORWARD_COST)


# -- training one member -----------------------------------------------------------------------------
def training_data(bundle: DatasetBundle, recipe: ScoringRecipe, grads: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training image (passes = 0) or a stratified subset of `grads / passes` images (fixed seed)."""
    x, y = bundle.x_train, bundle.y_train
    if recipe.passes <= 0:
        return x, y
    n = int(min(len(y), max(bundle.num_classes, round(grads / recipe.passes))))
    per_class = max(1, n // bundle.num_classes)
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    idx = []
    for c in range(bundle.num_classes):
        members = torch.nonzero(y == c).flatten()
        idx.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    sel = torch.cat(idx).sort().values
    return x[sel], y[sel]


def train_member(
    arch: ArchSpec,
    bundle: DatasetBundle,
    recipe: ScoringRecipe,
    seed: int,
    *,
    truth_grads: float,
    bn_images: int,
    device: str | torch.device = "cpu",
) -> dict:
    """Train `arch` once under `recipe`'s training settings and record every score kind's raw material:
    final val accuracy/loss without and with BN re-estimation on `bn_images` real images, the per-step
    training losses and the val curve. `bn_images` is charged in the training budget even when a score
    does not use it, so every kind read from this record stays within the budget."""
    device = resolve_device(device)
    grads = recipe.train_grads(truth_grads, bn_images)
    x, y = training_data(bundle, recipe, grads)
    from nasdd.cost import matched_recipe

    base = TrainRecipe(epochs=0, batch_size=recipe.batch_size, lr=recipe.lr, schedule="cosine")
    train_recipe = matched_recipe(base, len(x), grads)
    x_val, y_val = bundle.split("val")
    curve_x, curve_y = x_val[: recipe.curve_images], y_val[: recipe.curve_images]
    total = train_recipe.total_steps(len(x))
    every = -(-total // CURVE_POINTS) if recipe.curve_images else 0  # <= CURVE_POINTS - 1 evaluations + the final
    record: dict = {"train_recipe": train_recipe.key(), "images": len(x), "steps": total}
    start = time.perf_counter()
    model = build_seeded(arch, image_shape(x), bundle.num_classes, seed)
    res = fit(
        model, x, y, train_recipe, seed=seed, device=device, monitor=Monitor(eval_every=every, record_losses=True),
        eval_data=(curve_x, curve_y) if recipe.curve_images else None,
    )  # fmt: skip
    record.update(status=res.status, error=res.error, sample_grads=res.sample_grads, losses=res.losses)
    record.update(params=res.params, flops=res.flops_per_sample)
    if res.ok:
        curve = [(float(s), float(a)) for s, a in res.history] + ([(float(total), res.accuracy)] if every else [])
        acc, loss = evaluate(model, x_val, y_val, device=device)
        gen = torch.Generator().manual_seed(seed)
        bn_x = bundle.x_train[torch.randperm(len(bundle.x_train), generator=gen)[:bn_images]]
        forwards = reestimate_bn(model, bn_x, device=device)
        acc_bn, loss_bn = evaluate(model, x_val, y_val, device=device) if forwards else (acc, loss)
        ok = math.isfinite(loss) and math.isfinite(loss_bn)
        record.update(
            status="ok" if ok else "failed", curve=curve, horizon=float(total) / recipe.budget,
            final={"acc": acc, "loss": loss}, final_bn={"acc": acc_bn, "loss": loss_bn},
            has_bn=bool(forwards), bn_forwards=forwards, curve_forwards=len(curve_x) * len(curve),
        )  # fmt: skip
    record["seconds"] = time.perf_counter() - start
    return record


# -- the cache -----------------------------------------------------------------------------------------
class ScoreCache:
    """Training records per (dataset key, training key, bn images, arch key, seed) in a JSON-lines file,
    appended and flushed one record at a time: a stopped run loses at most the training in flight."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[tuple, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash
                    self.records[self._key(r)] = r

    @staticmethod
    def _key(r: dict) -> tuple:
        return (r["dataset_key"], r["training_key"], r["bn_images"], r["arch_key"], r["seed"])

    def get(self, dataset_key: str, recipe: ScoringRecipe, bn_images: int, arch_key: str, seed: int) -> dict | None:
        return self.records.get((dataset_key, recipe.training_key(), bn_images, arch_key, seed))

    def put(self, record: dict) -> None:
        self.records[self._key(record)] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())


def score_pool(
    cache: ScoreCache,
    bundle: DatasetBundle,
    pool: list[ArchSpec],
    recipe: ScoringRecipe,
    seeds: list[int],
    *,
    truth_grads: float,
    device: str | torch.device = "cpu",
    log: bool = True,
) -> list[dict]:
    """Train (or read back) every member x seed under `recipe`'s training settings, BatchNorm statistics
    re-estimated on `recipe.bn_images` images (recorded for every score kind); the cached records."""
    out = []
    bn_images = recipe.bn_images
    for i, arch in enumerate(pool):
        for s in seeds:
            r = cache.get(bundle.key, recipe, bn_images, arch.key(), s)
            if r is None:
                r = train_member(arch, bundle, recipe, s, truth_grads=truth_grads, bn_images=bn_images, device=device)
                r.update(
                    dataset_key=bundle.key, training_key=recipe.training_key(), bn_images=bn_images,
                    arch_key=arch.key(), seed=s, recipe=asdict(replace(recipe, members=())),
                )  # fmt: skip
                cache.put(r)
                if log:
                    print(f"[{i + 1}/{len(pool)}] {arch.key()} seed {s}: {r['status']} {r['seconds']:.1f}s", flush=True)
            out.append(r)
    return out
