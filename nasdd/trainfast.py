"""Speed mechanics of the one trainer (`nasdd.train`): cache-sized chunks and compiled models.

Chunks: on CPU a training batch runs forward and backward in slices whose largest activation is about
`CHUNK_BYTES`, so the memory-bound element-wise passes (norm, activation, pooling and their backward)
stay in cache; gradients are accumulated, so the update is the batch's up to float rounding. Only for
models without batch statistics (no BatchNorm): there a slice would change the statistics.

Compilation: `torch.compile(model, dynamic=False)` for the chunk's one static shape (a shorter last slice
runs eager, so it never recompiles). Dynamo keeps one cache entry per architecture in the process and
Inductor's on-disk cache makes a repeat in a new process cost seconds. `auto` compiles only where the
measured break-even says it pays (`COMPILE_MIN_FLOPS`); on CUDA it is not measured, so `auto` is off there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nasdd.errors import NasddError
from nasdd.utils import stable_hash

CHUNK_BYTES = 4 * 2**20  # CPU: chunk a batch so that its largest activation is about this size (L2/L3 cache)
# `compile_model=None` ("auto") compiles on these devices when 3 x forward FLOPs x sample-gradients exceed
# the value: ~80 s of eager training here, where a cold compile costs 20-40 s and saves ~40% of each step.
COMPILE_MIN_FLOPS = {"cpu": 1.5e12}
COMPILE_FAILED: set[str] = set()  # structural keys of models whose compilation failed in this process


def per_sample_model(model: nn.Module) -> bool:
    """True when a training-mode forward treats samples independently (no batch statistics)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def activation_numel(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    """Elements of the largest module output for one sample (probed on two samples, in eval mode)."""
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() if torch.is_tensor(o) else 0))
        for m in model.modules()
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return max(sizes, default=1) // 2


def chunk_size(
    model: nn.Module, shape: tuple[int, ...], batch_size: int, device: torch.device, *, per_sample: bool = False
) -> int:
    """The batch slice run at once on CPU: a power of two (>= 8) whose largest activation fits CHUNK_BYTES."""
    if device.type != "cpu" or not (per_sample or per_sample_model(model)):
        return batch_size
    fits = CHUNK_BYTES // (4 * max(activation_numel(model, shape, device), 1))
    return min(batch_size, 2 ** max(3, int(fits).bit_length() - 1))


def compile_wanted(compile_model: bool | None, device: torch.device, train_flops: float) -> bool:
    if compile_model is None:
        env = os.environ.get("NASDD_COMPILE", "auto").lower()
        if env not in ("auto", "0", "1"):
            raise NasddError(f"NASDD_COMPILE={env!r} is invalid; valid values: auto, 0, 1")
        compile_model = None if env == "auto" else env == "1"
    if compile_model is None:
        return train_flops >= COMPILE_MIN_FLOPS.get(device.type, math.inf)
    return compile_model


def model_key(model: nn.Module, shape: tuple[int, ...]) -> str:
    return stable_hash([repr(model), list(shape)], 16)


def forward_backward(
    fwd: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Mean cross-entropy of the batch, with its gradients accumulated chunk by chunk.

    Full chunks run through `fwd` (maybe compiled, for one static shape); a shorter remainder runs eager.
    """
    total = torch.zeros((), device=xb.device)
    for j in range(0, len(xb), chunk):
        xc, yc = xb[j : j + chunk], yb[j : j + chunk]
        loss = F.cross_entropy((fwd if len(xc) == chunk else model)(xc), yc, reduction="sum") / len(xb)
        loss.backward()
        total += loss.detach()
    return total


def compiled(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model` compiled for one static input shape; allows one Dynamo cache entry per architecture."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 64)
    return torch.compile(model, dynamic=False)
