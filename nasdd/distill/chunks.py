"""Cache-sized micro-batches, and optionally compiled forwards, for the distillers' passes through a
matching network on CPU.

On one CPU core a pass over many images is faster in small chunks than in one batch: the ConvNet's
first block writes 128 x 28 x 28 floats (400 KB) per image, so a batch of 256 streams ~100 MB through
memory per elementwise op, while a chunk of 16 (6 MB) stays in the L2/L3 caches. Measured on mnist5k
(ConvNet width 128, one core): a no-grad forward of 2,560 images ~1.8x faster in chunks of 16-32, a
per-class weight gradient on 64 images ~1.3x faster in chunks of 16. Splitting changes nothing but float
rounding when no layer mixes samples (instance/group/layer norm, or BatchNorm in eval mode); a network
with BatchNorm in training mode, and every non-CPU device, gets one batch.

Compiled passes (`with_compiled`; opt-in as for the trainer: `compile_model=True` or NASDD_COMPILE=1):
`torch.compile` fuses the norm, activation and pooling passes that convolutions leave memory-bound; each
compiled map serves one static chunk shape (others run eager), for first-order passes only (compiled graphs
do not back-propagate twice). A network re-initialised in place keeps its compiled map.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from nasdd.trainfast import COMPILE_FAILED, compile_wanted, compiled, model_key

T = TypeVar("T")

CPU_CHUNK = 16  # images per chunk on CPU


def chunk_size(net: nn.Module, x: torch.Tensor) -> int:
    """How many images of `x` to pass through `net` at once without changing the result."""
    mixes = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())
    return CPU_CHUNK if x.device.type == "cpu" and not mixes else max(len(x), 1)


def chunked(fn: Callable[[torch.Tensor], Any], net: nn.Module, x: torch.Tensor) -> Any:
    """`fn(x)` (a per-sample map through `net`, e.g. `net.features`, returning a tensor or a list of
    tensors such as `layer_outputs`) computed chunk by chunk (`chunk_size`)."""
    size = chunk_size(net, x)
    if size >= len(x):
        return fn(x)
    parts = [fn(c) for c in x.split(size)]
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [torch.cat(p) for p in zip(*parts, strict=True)]


class OneShape:
    """`fn` compiled (`nasdd.trainfast.compiled`) for the first input shape it sees; other shapes (a shorter
    last chunk) run `fn` eager, so it never recompiles."""

    def __init__(self, fn: Callable[[torch.Tensor], Any]) -> None:
        self.fn, self.compiled = fn, compiled(fn)
        self.shape: torch.Size | None = None

    def __call__(self, x: torch.Tensor) -> Any:
        self.shape = self.shape or x.shape
        return (self.compiled if x.shape == self.shape else self.fn)(x)


def with_compiled(
    run: Callable[[Callable[[torch.Tensor], Any]], T],
    fn: Callable[[torch.Tensor], Any],
    net: nn.Module,
    cache: dict[tuple[int, str], OneShape],
    compile_model: bool | None,
) -> T:
    """`run(f)` where `f` is `fn` (a map through `net`: `net` itself or e.g. `net.features`) compiled when
    `compile_model` asks for it (None: NASDD_COMPILE), kept in `cache` per network object and map; `fn`
    itself when not asked, and after a failed compilation (a warning; that architecture stays eager)."""
    if not compile_wanted(compile_model):
        return run(fn)
    failed = model_key(net, ())
    if failed in COMPILE_FAILED:
        return run(fn)
    key = (id(net), getattr(fn, "__name__", type(fn).__name__))
    if key not in cache:
        cache[key] = OneShape(fn)
    try:
        return run(cache[key])
    except Exception as exc:  # e.g. no C++ compiler for Inductor
        warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); running eager", stacklevel=2)
        COMPILE_FAILED.add(failed)
        return run(fn)
