"""The Distiller base class and the method registry.

A method is one small subclass. One-shot methods (coresets) override `select`; iterative methods
override `setup` and `step` and learn `self.images` (and optionally `self.labels`, `self.syn_lr`).
The base runs the loop: per-iteration seeding (so `--resume` continues exactly), a progress bar with
the loss, checkpoints every `checkpoint_every` iterations, and a NaN/inf guard that keeps the last
good images and stops with a message.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.models import DEFAULT_ARCH
from nasdd.registry import Registry
from nasdd.utils import atomic_open, progress, resolve_device

CHECKPOINT = "checkpoint.pt"


def sample_real(bundle: DatasetBundle, ipc: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random training images of every class (class-major order), drawn with `gen`."""
    xs, ys = [], []
    for c, idx in enumerate(bundle.class_indices()):
        pick = idx[torch.randperm(len(idx), generator=gen)[:ipc]]
        xs.append(bundle.x_train[pick])
        ys.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def per_ipc(value: Any, ipc: int) -> Any:
    """`value`, or its entry for the ipc nearest `ipc` (the smaller on a tie) when it maps ipc -> value."""
    return value[min(value, key=lambda k: (abs(k - ipc), k))] if isinstance(value, dict) else value


class Distiller:
    """Base for every distillation method; constructors only store parameters (scikit-learn style).

    Common options: ipc, seed, iterations, init (`real` | `noise`), arch (the matching network),
    lr_img (image learning rate), device, checkpoint_every; `iterations` and `lr_img` may also map
    ipc -> value (presets do; the nearest ipc is used). Method-specific options and their defaults
    live in the class attribute `defaults`; after `run`, they are in `self.options`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    note: ClassVar[str] = ""  # approximations / CPU deviations, shown by `nasdd list methods`
    iterative: ClassVar[bool] = True
    default_iterations: ClassVar[int] = 1000
    default_lr_img: ClassVar[float] = 0.1
    defaults: ClassVar[dict[str, Any]] = {}
    # named settings, e.g. {"quick": {...}, "cpu": {...}}: keyword arguments (iterations, lr_img, options)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self,
        *,
        ipc: int,
        seed: int = 0,
        iterations: int | dict[int, int] | None = None,
        init: str = "real",
        arch: ArchSpec | None = None,
        lr_img: float | dict[int, float] | None = None,
        device: str | torch.device = "auto",
        checkpoint_every: int = 100,
        **options: Any,
    ) -> None:
        unknown = set(options) - set(self.defaults)
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise NasddError(f"method {self.name} has no option {sorted(unknown)[0]!r}; valid options: {valid}")
        self.ipc, self.seed, self.init, self.device = ipc, seed, init, device
        self.iterations = self.default_iterations if iterations is None else per_ipc(iterations, ipc)
        self.arch = arch or DEFAULT_ARCH
        self.lr_img = self.default_lr_img if lr_img is None else per_ipc(lr_img, ipc)
        self.checkpoint_every = checkpoint_every
        self.options = {**self.defaults, **options}

    # ----------------------------------------------------------------------------------------- hooks
    def select(self, bundle: DatasetBundle, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One-shot methods: return (images, labels) chosen from the training set."""
        raise NotImplementedError

    def setup(self, bundle: DatasetBundle) -> None:
        """Iterative methods: build networks and optimisers; `self.images`/`labels` are initialised."""
        raise NotImplementedError

    def step(self, it: int) -> float:
        """Iterative methods: one outer iteration; return its loss."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Additional checkpoint contents (e.g. optimiser states)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def learned_lr(self) -> float | None:
        """The learned learning rate to store with the proxy (`self.syn_lr`, if a method learns one)."""
        return None if self.syn_lr is None else float(self.syn_lr.detach())

    # ------------------------------------------------------------------------------------- the loop
    def config(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "ipc": self.ipc,
            "seed": self.seed,
            "iterations": self.iterations if self.iterative else 0,
            "init": self.init,
            "arch": self.arch.to_dict(),
            "lr_img": self.lr_img,
            **self.options,
        }

    def count(self, n: int) -> None:
        """Record `n` sample-gradient evaluations (per-sample forward + backward through a network)."""
        self.sample_grads += int(n)

    def _validate(self, bundle: DatasetBundle) -> None:
        if not isinstance(self.ipc, int) or self.ipc < 1:
            raise NasddError(f"ipc must be a positive integer, got {self.ipc}")
        smallest = min(len(i) for i in bundle.class_indices())
        if self.ipc > smallest:
            raise NasddError(
                f"ipc {self.ipc} exceeds the smallest class of {bundle.name} ({smallest} images); "
                f"use --ipc {smallest} or less"
            )
        if self.iterations < 0:
            raise NasddError(f"iterations must be >= 0, got {self.iterations}")
        if self.init not in ("real", "noise"):
            raise NasddError(f"unknown init {self.init!r}; valid inits: real, noise")
        if not (math.isfinite(self.lr_img) and self.lr_img > 0):
            raise NasddError(f"lr_img must be a positive finite number, got {self.lr_img}")

    def run(self, bundle: DatasetBundle, *, out: str | Path | None = None, resume: bool = False) -> ProxySet:
        """Distil `bundle` into a ProxySet (checkpoints go to `out` when given)."""
        self._validate(bundle)
        self.bundle, self.dev = bundle, resolve_device(self.device)
        self.sample_grads, self.seconds = 0, 0.0
        gen = torch.Generator().manual_seed(self.seed)
        start = time.perf_counter()
        if not self.iterative:
            images, labels = self.select(bundle, gen)
            self.images, self.labels, self.syn_lr = images, labels, None
            self.seconds += time.perf_counter() - start
            return self.to_proxy()
        x, y = sample_real(bundle, self.ipc, gen)
        if self.init == "noise":
            x = torch.randn(x.shape, generator=gen)
        self.start_images = x.clone()  # to tell how far distillation moved them (provenance `moved`)
        self.images = x.to(self.dev).requires_grad_(True)
        self.labels = y.to(self.dev)
        self.syn_lr: torch.Tensor | None = None
        self.setup(bundle)
        first = self._maybe_resume(out) if resume else 0
        bar = progress(total=self.iterations, initial=first, desc=f"distill {self.name}")
        for it in range(first, self.iterations):
            good = (self.images.detach().clone(), self.labels.detach().clone())
            torch.manual_seed(self.seed * 1_000_003 + it)
            loss = self.step(it)
            if not (math.isfinite(loss) and bool(torch.isfinite(self.images).all())):
                self._diverged(it, loss, good, out, start)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            if out is not None and self.checkpoint_every and (it + 1) % self.checkpoint_every == 0:
                self._checkpoint(out, it + 1, time.perf_counter() - start)
        bar.close()
        self.seconds += time.perf_counter() - start
        if out is not None:
            self._checkpoint(out, self.iterations, 0.0)
        return self.to_proxy()

    def to_proxy(self) -> ProxySet:
        lr = self.learned_lr()
        return ProxySet(
            images=self.images.detach(),
            labels=self.labels.detach(),
            meta=self.bundle.meta(),
            lr=lr,
            zca=getattr(self, "zca", None),
            provenance={
                "method": self.name,
                "family": self.family,
                "dataset": self.bundle.name,
                "ipc": self.ipc,
                "seed": self.seed,
                "config": self.config(),
                "cost": {"seconds": round(self.seconds, 3), "sample_grads": self.sample_grads},
                "moved": self._moved(),
            },
        )

    def _moved(self) -> float | None:
        """Mean absolute change of the pixels from their initialisation, in units of the data's std
        (images are normalised); None for selections, which do not move images."""
        start = getattr(self, "start_images", None)
        if start is None or not self.iterative:
            return None
        return round(float((self.images.detach().cpu() - start).abs().mean()), 4)

    # ------------------------------------------------------------------------- checkpoints / guards
    def _state(self, iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "config": self.config(),
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "syn_lr": None if self.syn_lr is None else self.syn_lr.detach().cpu(),
            "sample_grads": self.sample_grads,
            "seconds": self.seconds,
            "extra": self.extra_state(),
        }

    def _checkpoint(self, out: str | Path, iteration: int, elapsed: float, extra: bool = True) -> None:
        state = self._state(iteration)
        state["seconds"] = self.seconds + elapsed
        if not extra:
            state["extra"] = {}
        with atomic_open(Path(out) / CHECKPOINT, "wb") as f:
            torch.save(state, f)

    def _maybe_resume(self, out: str | Path | None) -> int:
        path = Path(out or ".") / CHECKPOINT
        if out is None or not path.exists():
            return 0
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise NasddError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from exc
        saved = {k: v for k, v in state["config"].items() if k != "iterations"}
        now = {k: v for k, v in self.config().items() if k != "iterations"}
        if saved != now:
            raise NasddError(
                f"checkpoint {path} was made with another configuration; use another --out or drop --resume"
            )
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.dev))
            self.labels.copy_(state["labels"])  # in place: learned labels stay the optimised tensor
            if state["syn_lr"] is not None and self.syn_lr is not None:
                self.syn_lr.copy_(state["syn_lr"].to(self.dev))
        self.sample_grads, self.seconds = state["sample_grads"], state["seconds"]
        if state["extra"]:  # empty after a divergence: optimiser states start afresh
            self.load_extra_state(state["extra"])
        return min(int(state["iteration"]), self.iterations)

    def _diverged(self, it: int, loss: float, good: tuple[torch.Tensor, torch.Tensor], out, start: float) -> None:
        with torch.no_grad():
            self.images.copy_(good[0])
            self.labels.copy_(good[1])
        where = ""
        if out is not None:
            # the optimiser states already took the failed step: they are not kept
            self._checkpoint(out, it, time.perf_counter() - start, extra=False)
            where = f"; the last good images are kept in {Path(out) / CHECKPOINT}"
        raise NasddError(
            f"{self.name} diverged at iteration {it} (loss {loss}){where}; "
            "lower --lr-img or the method's learning rates"
        )


METHODS: Registry[type[Distiller]] = Registry("method")


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: add a Distiller subclass to the registry under its `name`."""
    METHODS.register(cls.name)(cls)
    return cls
