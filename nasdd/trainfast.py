"""Speed mechanics of the one trainer (`nasdd.train`): cache-sized chunks and compiled models.

Chunks: on CPU a training batch runs forward and backward in slices whose largest activation is about
`CHUNK_BYTES`, so the memory-bound element-wise passes (norm, activation, pooling and their backward)
stay in cache; gradients are accumulated, so the update is the batch's up to float rounding. Only for
models without batch statistics (no BatchNorm): there a slice would change the statistics.

Compilation (opt-in: `fit(compile_model=True)` or `NASDD_COMPILE=1`): `torch.compile(model, dynamic=False)`
for the chunk's one static shape (a shorter last slice runs eager, so it never recompiles). Dynamo keeps
one cache entry per architecture in the process; Inductor's on-disk cache makes a repeat in a new process
cost seconds. It is not automatic because on one CPU thread its gain changes sign with the architecture
(results/train_throughput.csv): pooled ConvNets gain over chunks alone, a ConvNet without pooling loses,
and a cold compile costs 20-120 s, so it pays only for long trainings of pooled ConvNets (full data,
truth tables). On CUDA it is not measured here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from nasdd.errors import NasddError
from nasdd.utils import stable_hash

T = TypeVar("T")

# CPU: chunk a batch so that its largest activation is about this size (measured: 4-16 MiB alike for pooled
# ConvNets, 16 MiB slower for a ConvNet without pooling; this machine has 2 MiB L2 per core, 32 MiB L3)
CHUNK_BYTES = 8 * 2**20
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


def compile_wanted(compile_model: bool | None) -> bool:
    """`compile_model`, or when None the environment variable NASDD_COMPILE (0 or 1, default 0)."""
    if compile_model is not None:
        return compile_model
    env = os.environ.get("NASDD_COMPILE", "0")
    if env not in ("0", "1"):
        raise NasddError(f"NASDD_COMPILE={env!r} is invalid; valid values: 0, 1")
    return env == "1"


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


def compiled(model: Callable[[torch.Tensor], T]) -> Callable[[torch.Tensor], T]:
    """`model` (a module or a map through one, e.g. `net.features`) compiled for one static input shape; allows
    one Dynamo cache entry per architecture."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 64)
    return torch.compile(model, dynamic=False)
