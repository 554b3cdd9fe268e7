"""Small shared helpers: devices, seeding, atomic file writes, progress bars, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nasdd.errors import NasddError

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar nasdd shows."""
    global _QUIET
    _QUIET = quiet


def progress(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm progress bar (with ETA) that `--quiet` silences (even where the caller asked for one)."""
    kwargs["disable"] = True if _QUIET else kwargs.get("disable", False)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(*args, **kwargs)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; `cuda` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NasddError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise NasddError(f"unknown device {device!r}; valid devices: auto, cpu, cuda, cuda:N")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def stable_hash(obj: Any, n: int = 16) -> str:
    """A hex digest of a JSON-serialisable object, equal across processes and machines."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_path(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary path beside `path` for libraries that write by filename; rename on success."""

    @contextlib.contextmanager
    def _ctx() -> Iterator[Path]:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}{target.suffix}")
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    return _ctx()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, pretty-printed and key-sorted."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def ensure_dir(path: str | Path) -> Path:
    """Create an output folder; a file in its place is a clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NasddError(f"output folder {path} is a file; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def proc_status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (e.g. VmRSS, VmHWM), or None where there is no /proc (benchmarks)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
