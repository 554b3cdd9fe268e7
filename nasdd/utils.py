"""Small shared helpers: devices, seeding, atomic file writes, progress bars, hashing.

torch, NumPy and tqdm are imported where used, so importing this module (as the CLI does) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from nasdd.errors import NasddError

if TYPE_CHECKING:
    import torch
    from tqdm import tqdm

_QUIET = False
_IMPORTED_AT = time.monotonic()


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar nasdd shows."""
    global _QUIET
    _QUIET = quiet


def progress(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm progress bar (with ETA) on a terminal; elsewhere (logs, pipes) no bar, so stages print one line
    each. `--quiet` silences every bar, even where the caller asked for one."""
    from tqdm.auto import tqdm

    kwargs["disable"] = True if _QUIET or not sys.stderr.isatty() else kwargs.get("disable", False)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(*args, **kwargs)


def seconds_since_start() -> float:
    """Wall seconds since this process started (interpreter start-up included; Linux /proc), else since
    nasdd was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; `cuda` without a GPU is a clear error."""
    import torch

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
    import numpy as np
    import torch

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
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    """The process umask, read once at import (setting it later from a thread would race)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


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


def load_untrusted(path: str | Path, *, what: str, remedy: str, version: int | None = None) -> Any:
    """A torch file read without pickle (`weights_only=True`: tensors and plain values only), so a tampered
    file cannot run code; a file holding other objects, a damaged one, or (with `version`) a dict whose
    `format` is newer than `version` is refused with one line naming `what` and the `remedy`."""
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip().startswith("WeightsUnpickler")), "")
        raise NasddError(
            f"{what} {path} holds objects other than tensors and plain values ({first.strip() or 'not allowed'}); "
            f"refused: it may be tampered with or come from another program; {remedy}"
        ) from None
    except Exception as exc:  # torch raises many types for damaged archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NasddError(f"{what} {path} cannot be read ({first}); {remedy}") from None
    found = data.get("format", 1) if isinstance(data, dict) else None
    if version is not None and (not isinstance(found, int) or found > version):
        raise NasddError(
            f"{what} {path} is format {found}, this nasdd reads up to {version} (made by a newer or another "
            f"nasdd); upgrade nasdd or {remedy}"
        )
    return data


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
