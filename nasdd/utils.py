"""Small shared helpers: devices, seeding, atomic file writes, progress bars, hashing.

torch, NumPy and tqdm are imported where used, so importing this module (as the CLI does) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from nasdd.errors import NasddError

if TYPE_CHECKING:
    from types import FrameType

    import torch
    from tqdm import tqdm

_QUIET = False
_IMPORTED_AT = time.monotonic()


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar nasdd shows."""
    global _QUIET
    _QUIET = quiet


def progress(*args: Any, **kwargs: Any) -> tqdm | LogProgress:
    """A tqdm progress bar (with ETA) on a terminal; elsewhere (logs, pipes) a LogProgress that prints a
    line now and then. `--quiet` silences both, as does `disable=True`; `disable=None` means no bar off a
    terminal (the caller prints lines of its own)."""
    from tqdm.auto import tqdm

    disable = kwargs.get("disable", False)
    if _QUIET or disable is True or (disable is None and not sys.stderr.isatty()):
        kwargs["disable"] = True
    elif not sys.stderr.isatty():
        kwargs.pop("disable", None)
        return LogProgress(*args, **kwargs)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(*args, **kwargs)


class LogProgress:
    """Progress for logs and pipes: a line on stderr when a tenth of the work is done since the last line
    (and `gap` seconds have passed: a fast stage prints few lines), or `every` seconds have passed (so a slow
    stage is never silent for longer than one unit of its work plus `every`), and at the end, with the
    rate's ETA; the same calls as tqdm's (`update`, `set_postfix_str`, iteration)."""

    def __init__(
        self, iterable: Iterable[Any] | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
        unit: str = "it", every: float = 20.0, gap: float = 2.0, **_: Any,
    ) -> None:  # fmt: skip
        self.iterable = iterable
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self.total, self.n, self.first, self.desc, self.unit = total, initial, initial, desc, unit
        self.every, self.gap = every, gap
        self.start = self.last_time = time.monotonic()
        self.last_n, self.postfix = initial, ""

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this LogProgress was given no iterable")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        step = max(1, (self.total or 0) // 10)
        since = now - self.last_time
        if (self.n - self.last_n >= step and since >= self.gap) or since >= self.every or self.n == self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        if self.n == self.last_n and self.n != self.first:
            return
        self.last_n, self.last_time = self.n, now
        done, spent = self.n - self.first, now - self.start
        of = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {self.n}{of} {self.unit}s, {_clock(spent)} spent"
        if self.total and done > 0 and self.n < self.total:
            text += f", ETA {_clock(spent / done * (self.total - self.n))}"
        print(text + (f" [{self.postfix}]" if self.postfix else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n != self.last_n:
            self._line(time.monotonic())


def clip(text: str, width: int = 52) -> str:
    """`text` without `key=` prefixes (`convnet(relu,3,…)`), cut to `width` characters (ending in `…` when
    cut): a bar's label must leave the bar room."""
    import re

    text = re.sub(r"\b[a-z_]+=", "", text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _clock(seconds: float) -> str:
    """`42 s`, `3 min 05 s` or `1 h 02 min`."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[Callable[[], bool]]:
    """Within the block, Ctrl-C (SIGINT) and SIGTERM only set a flag, which the yielded function reads, so
    a loop can finish its unit of work and save it before stopping; a second signal interrupts at once.
    Signals that are ignored stay ignored; off the main thread nothing changes (the flag stays false)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    got: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if got:
            raise KeyboardInterrupt
        got.append(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield lambda: bool(got)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def usable_cores(cpus: set[int] | None = None, load: float | None = None) -> tuple[int, int]:
    """(cores this process may run on, of those not kept busy by other processes), from the affinity mask
    (`os.sched_getaffinity`) and the 1-minute load average, which counts the busy cores of the machine."""
    cpus = cpus if cpus is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None)
    n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    return n, max(1, min(n, n - round(load)))


def default_threads(cpus: set[int] | None = None, load: float | None = None) -> int:
    """torch's thread count when neither `--threads` nor OMP_NUM_THREADS says: the cores this process may
    use that no other process keeps busy (at least 1). torch's own default (one thread per core of the
    machine) makes every small training wait for a thread that cannot run when a core is busy."""
    return usable_cores(cpus, load)[1]


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
        raise NasddError(
            "`device` cuda was asked for but no CUDA GPU is available; use `device` cpu or auto", params=("device",)
        )
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


_CREATED: list[Path] = []  # folders ensure_dir created in this command (see remove_empty_created)


def ensure_dir(path: str | Path) -> Path:
    """Create an output folder (remembered for `remove_empty_created`); a file in its place is a clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NasddError(f"output folder {path} is a file; choose another `out`", params=("out",))
    if not path.exists():
        top = path
        while not top.parent.exists():
            top = top.parent
        path.mkdir(parents=True, exist_ok=True)
        _CREATED.append(top)
    return path


def remove_empty_created() -> list[Path]:
    """Remove the folders `ensure_dir` created since the last call that hold no file (a failed command's
    leftovers); return those removed."""
    import shutil

    removed = []
    for top in reversed(_CREATED):
        if top.is_dir() and not any(not p.is_dir() for p in top.rglob("*")):
            shutil.rmtree(top, ignore_errors=True)
            removed.append(top)
    _CREATED.clear()
    return removed


def proc_status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (e.g. VmRSS, VmHWM), or None where there is no /proc (benchmarks)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
