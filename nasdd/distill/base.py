"""The Distiller base class and the method registry.

A method is one small subclass. One-shot methods (coresets) override `select`; iterative methods
override `setup` and `step` and learn `self.images` (and optionally `self.labels`, `self.syn_lr`).
The base runs the loop: per-iteration seeding (so `--resume` continues exactly), a progress bar with
the loss, checkpoints every `checkpoint_every` iterations and when Ctrl-C or SIGTERM arrives (the
iteration under way finishes first; a second signal stops at once), and a NaN/inf guard that keeps the
last good images and stops with a message. A checkpoint is never overwritten by another run: one of
another configuration is refused (unless `overwrite`), one of this configuration is resumed with
`resume` and refused without it.

Matching networks: a method asks the base which architecture(s) it matches through in iteration `it`
(`matching_archs(it, k)`, `matching_arch(it)`) and for a built network (`network(arch)`), never builds a
sampler of its own. Without `match_space` that is the one `arch`. With `match_space` (a search-space name,
YAML path or SearchSpace) the base draws a pool of `match_pool` members spread over the space's factors
(`nasdd.spaces.draw_pool`, seeded by `seed`) and deals them to the iterations: slot `it * k + j` takes
the member at that position of a seeded permutation of the pool per pass, so every member is used
(about) equally often and the k members of one iteration are distinct while k <= pool; the choice
depends only on (seed, it, k), so a resumed run draws exactly what an uninterrupted one would. Members
are used as drawn (a method's own width/normalisation options only narrow the fixed `arch`). The proxy's
provenance (its config) records the space and the pool.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.distill.options import Options
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.models import DEFAULT_ARCH, Classifier
from nasdd.registry import Registry
from nasdd.spaces import SearchSpace, draw_pool, load_space
from nasdd.train import build_seeded
from nasdd.utils import atomic_open, deferred_interrupts, load_untrusted, progress, resolve_device

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1  # the `format` a checkpoint records; a newer one is refused
DEFAULT_MATCH_POOL = 16
V = TypeVar("V")


@dataclass(frozen=True)
class Saving:
    """Where a distillation saves and what it does with what is there (see the module docstring): the folder
    `out` (None: nothing is saved), `resume` its checkpoint of this configuration, `overwrite` a proxy or a
    checkpoint of another one, a checkpoint every `checkpoint_every` iterations (0: only at the end and
    when stopped), kept after the proxy is saved with `keep_checkpoint` (`nasdd.distill.distill`)."""

    out: str | Path | None = None
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 100
    keep_checkpoint: bool = False


def sample_real(bundle: DatasetBundle, ipc: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random training images of every class (class-major order), drawn with `gen`."""
    xs, ys = [], []
    for c, idx in enumerate(bundle.class_indices()):
        pick = idx[torch.randperm(len(idx), generator=gen)[:ipc]]
        xs.append(bundle.x_train[pick])
        ys.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def match_pool(space: str | Path | SearchSpace, n: int | None, seed: int) -> tuple[SearchSpace, list[ArchSpec]]:
    """The match space (loaded if named) and its `n` members (default 16, at most the space's size),
    spread over its factors and reproducible by `seed`."""
    space = space if isinstance(space, SearchSpace) else load_space(space)
    n = DEFAULT_MATCH_POOL if n is None else n
    if not (isinstance(n, int) and n >= 1):
        raise NasddError(f"`match_pool` must be a positive integer, got {n!r}", params=("match_pool",))
    return space, draw_pool(space, int(min(n, space.size)), seed=seed)  # size: math.inf when infinite


def per_ipc(value: V | dict[int, V], ipc: int) -> V:
    """`value`, or its entry for the ipc nearest `ipc` (the smaller on a tie) when it maps ipc -> value."""
    return value[min(value, key=lambda k: (abs(k - ipc), k))] if isinstance(value, dict) else value


class Distiller:
    """Base for every distillation method; constructors only store parameters (scikit-learn style).

    Common options: ipc, seed, iterations, init (`real` | `noise`), arch (the matching network),
    match_space / match_pool (match through members of a search space instead, see the module docstring),
    lr_img (image learning rate), device; `iterations` and `lr_img` may also map
    ipc -> value (presets do; the nearest ipc is used). Method-specific options are the keyword arguments
    left; they fill the method's `options_type` (a frozen `nasdd.distill.options.Options` dataclass:
    types and defaults), checked on construction and kept as `self.opts`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    note: ClassVar[str] = ""  # approximations / CPU deviations, shown by `nasdd list methods`
    iterative: ClassVar[bool] = True
    default_iterations: ClassVar[int] = 1000
    default_lr_img: ClassVar[float] = 0.1
    options_type: ClassVar[type[Options]] = Options
    opts: Options  # an instance of `options_type` (subclasses narrow the annotation)
    # set by `run`: the proxy's images and labels, and its learned lr (None unless the method learns one)
    images: torch.Tensor
    labels: torch.Tensor
    syn_lr: torch.Tensor | None
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
        match_space: str | Path | SearchSpace | None = None,
        match_pool: int | None = None,
        **options: Any,
    ) -> None:
        self.opts = self.options_type.make(self.name, options)
        self.ipc, self.seed, self.init, self.device = ipc, seed, init, device
        self.iterations = self.default_iterations if iterations is None else per_ipc(iterations, ipc)
        self.arch = arch or DEFAULT_ARCH
        self.lr_img = self.default_lr_img if lr_img is None else per_ipc(lr_img, ipc)
        self.match_space, self.match_pool = match_space, match_pool

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

    # -------------------------------------------------------------------------- matching networks
    def _draw_match_pool(self) -> None:
        """`self.space_` and `self.pool_`: the matching space and its drawn members (None / [arch] without)."""
        self.space_: SearchSpace | None = None
        self.pool_ = [self.arch]
        self.nets_: dict[tuple[ArchSpec, int], Classifier] = {}
        if self.match_space is None:
            if self.match_pool is not None:
                raise NasddError("`match_pool` needs `match_space`", params=("match_pool", "match_space"))
            return
        if not self.iterative:
            raise NasddError(
                f"method {self.name} selects real images and matches no network; drop `match_space`",
                params=("match_space",),
            )
        self.space_, self.pool_ = match_pool(self.match_space, self.match_pool, self.seed)

    def matching_archs(self, it: int, k: int = 1) -> list[ArchSpec]:
        """The `k` matching architectures of iteration `it` (see the module docstring)."""
        pool = self.pool_
        if len(pool) == 1:
            return pool * k
        out = []
        for slot in range(it * k, it * k + k):
            order = list(range(len(pool)))
            random.Random(self.seed * 1_000_003 + slot // len(pool)).shuffle(order)
            out.append(pool[order[slot % len(pool)]])
        if k <= len(pool):  # a pass boundary can repeat a member: fill up with the last pass's next ones
            out = list(dict.fromkeys(out))
            out += [a for a in (pool[i] for i in order) if a not in out][: k - len(out)]
        return out

    def matching_arch(self, it: int) -> ArchSpec:
        return self.matching_archs(it, 1)[0]

    def network(self, arch: ArchSpec, outputs: int | None = None) -> Classifier:
        """`arch` built on the device with initial weights seeded by `seed` (cached: one module per
        architecture and output width; methods that re-initialise it do so in place)."""
        key = (arch, self.bundle.num_classes if outputs is None else outputs)
        if key not in self.nets_:
            shape = (self.bundle.channels, self.bundle.image_size, self.bundle.image_size)
            self.nets_[key] = build_seeded(arch, shape, key[1], self.seed).to(self.dev)
        return self.nets_[key]

    # ------------------------------------------------------------------------------------- the loop
    def config(self) -> dict[str, Any]:
        config = {
            "method": self.name,
            "ipc": self.ipc,
            "seed": self.seed,
            "iterations": self.iterations if self.iterative else 0,
            "init": self.init,
            "arch": self.arch.to_dict(),
            "lr_img": self.lr_img,
            **self.opts.record(),
        }
        space = getattr(self, "space_", None)  # set by `run`
        if space is not None:  # only then: fixed-arch configurations stay as they were
            config["match_space"] = space.name
            config["match_pool"] = [a.to_dict() for a in self.pool_]
        return config

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
                f"use `ipc` {smallest} or less",
                params=("ipc",),
            )
        if self.iterations < 0:
            raise NasddError(f"iterations must be >= 0, got {self.iterations}")
        if self.init not in ("real", "noise"):
            raise NasddError(f"unknown init {self.init!r}; valid inits: real, noise")
        if not (math.isfinite(self.lr_img) and self.lr_img > 0):
            raise NasddError(f"lr_img must be a positive finite number, got {self.lr_img}")

    def run(self, bundle: DatasetBundle, saving: Saving | None = None) -> ProxySet:
        """Distil `bundle` into a ProxySet (checkpoints go to `saving.out` when given; see the module docstring)."""
        saving = saving or Saving()
        out, every = saving.out, saving.checkpoint_every
        self._validate(bundle)
        self.bundle, self.dev = bundle, resolve_device(self.device)
        self._draw_match_pool()
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
        self.syn_lr = None
        self.setup(bundle)
        first = self._maybe_resume(out, saving.resume, saving.overwrite)
        bar = progress(total=self.iterations, initial=first, desc=f"distill {self.name}", unit="iteration")
        with deferred_interrupts() as interrupted:
            for it in range(first, self.iterations):
                good = (self.images.detach().clone(), self.labels.detach().clone())
                torch.manual_seed(self.seed * 1_000_003 + it)
                loss = self.step(it)
                if not (math.isfinite(loss) and bool(torch.isfinite(self.images).all())):
                    self._diverged(it, loss, good, out, start)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
                if interrupted():
                    self._stop(out, it + 1, time.perf_counter() - start)
                if out is not None and every and (it + 1) % every == 0:
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
            "format": CHECKPOINT_FORMAT,
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

    def _stop(self, out: str | Path | None, done: int, elapsed: float) -> None:
        """Ctrl-C or SIGTERM arrived: save the `done` finished iterations (with `out`) and stop."""
        if out is None:
            raise KeyboardInterrupt(f"{self.name} stopped after iteration {done} of {self.iterations}; nothing saved")
        self._checkpoint(out, done, elapsed)
        raise KeyboardInterrupt(
            f"{self.name} stopped after iteration {done} of {self.iterations}; its images, labels and optimiser "
            f"state are saved in {Path(out) / CHECKPOINT}"
        )

    def _maybe_resume(self, out: str | Path | None, resume: bool = True, overwrite: bool = False) -> int:
        """The iteration to start from: that of `out`'s checkpoint when it is resumed (see the module
        docstring), else 0."""
        path = Path(out or ".") / CHECKPOINT
        if out is None or not path.exists():
            return 0
        state = load_untrusted(path, what="checkpoint", remedy="delete it to start over", version=CHECKPOINT_FORMAT)
        saved = {k: v for k, v in state["config"].items() if k != "iterations"}
        now = {k: v for k, v in self.config().items() if k != "iterations"}
        if saved != now:
            if overwrite:
                return 0
            differ = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
            raise NasddError(
                f"{path} holds a checkpoint of another configuration ({', '.join(differ[:3])} differ); "
                "use another `out`, or `overwrite` to discard it",
                params=("out", "overwrite"),
            )
        if not resume:
            raise NasddError(
                f"{path} holds a checkpoint of this configuration (iteration {state['iteration']}); "
                "resume it with `resume` or use another `out`",
                params=("resume", "out"),
            )
        print(f"resuming from {path} (iteration {state['iteration']} of {self.iterations})", file=sys.stderr)
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.dev))
            self.labels.copy_(state["labels"])  # in place: learned labels stay the optimised tensor
            if state["syn_lr"] is not None and self.syn_lr is not None:
                self.syn_lr.copy_(state["syn_lr"].to(self.dev))
        self.sample_grads, self.seconds = state["sample_grads"], state["seconds"]
        if state["extra"]:  # empty after a divergence: optimiser states start afresh
            self.load_extra_state(state["extra"])
        return min(int(state["iteration"]), self.iterations)

    def _diverged(
        self, it: int, loss: float, good: tuple[torch.Tensor, torch.Tensor], out: str | Path | None, start: float
    ) -> None:
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
            "lower `lr_img` or the method's learning rates",
            params=("lr_img",),
        )


METHODS: Registry[type[Distiller]] = Registry("method")


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: add a Distiller subclass to the registry under its `name`."""
    METHODS.register(cls.name)(cls)
    return cls
