"""Distillation: every method is a Distiller subclass registered in METHODS (see base.py).

Method modules in this package are imported automatically, so adding a method is adding a module.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

from nasdd.data import DatasetBundle
from nasdd.distill.base import CHECKPOINT, METHODS, Distiller, Saving, register
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.layout import RunLayout

_NOT_METHODS = {"base", "options", "proxy", "evaluate", "experts", "hypergrad", "importers"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _NOT_METHODS:
        importlib.import_module(f"{__name__}.{_m.name}")


def distill(
    bundle: DatasetBundle,
    method: str,
    ipc: int,
    seed: int = 0,
    *,
    preset: str | None = None,
    saving: Saving | None = None,
    **kwargs: Any,
) -> ProxySet:
    """Distil `bundle` with `method` into `ipc` images per class; with `saving.out`, save the proxy and its
    grid (and remove the checkpoint once they are saved, unless `saving.keep_checkpoint`). A proxy already
    in `out` is refused unless `saving.overwrite`; `saving.resume` continues `out`'s checkpoint (see
    `nasdd.distill.base.Saving`).

    `preset` names one of the method's presets (e.g. `quick`, `cpu`); explicit keyword arguments (the
    Distiller's: iterations, lr_img, arch, ..., and the method's options) win.
    """
    cls = METHODS.get(method)
    if preset is not None:
        if preset not in cls.presets:
            raise NasddError(
                f"method {method} has no preset {preset!r}; valid presets: {', '.join(cls.presets) or 'none'}"
            )
        kwargs = {**cls.presets[preset], **{k: v for k, v in kwargs.items() if v is not None}}
    distiller = cls(ipc=ipc, seed=seed, **kwargs)
    saving = saving or Saving()
    out = saving.out
    if out is not None and RunLayout(Path(out)).holds_proxy() and not saving.overwrite:
        raise NasddError(
            f"{out} already holds a proxy ({_describe(Path(out))}); use another `out`, or `overwrite`",
            params=("out", "overwrite"),
        )
    proxy = distiller.run(bundle, saving)
    if out is not None:
        proxy.save(out)
        proxy.save_grid(Path(out) / "grid.png")
        if not saving.keep_checkpoint:
            (Path(out) / CHECKPOINT).unlink(missing_ok=True)
    return proxy


def _describe(folder: Path) -> str:
    """`method dm, ipc 10, dataset mnist5k` from a proxy folder's sidecar (best effort)."""
    try:
        prov = json.loads(RunLayout(folder).sidecar.read_text()).get("provenance", {})
        return f"method {prov.get('method')}, ipc {prov.get('ipc')}, dataset {prov.get('dataset')}"
    except (OSError, ValueError, AttributeError):
        return "unreadable sidecar"


def catalog() -> list[tuple[str, str]]:
    """(name, 'family — paper [note]') for `nasdd list methods`."""
    rows = []
    for name, cls in METHODS.items():
        text = f"{cls.family}: {cls.paper}"
        rows.append((name, f"{text} [{cls.note}]" if cls.note else text))
    return rows


__all__ = ["METHODS", "Distiller", "ProxySet", "Saving", "catalog", "distill", "register"]
