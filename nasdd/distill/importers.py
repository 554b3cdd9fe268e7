"""Synthetic sets from other codebases become ProxySets at this boundary (nothing past it knows a format).

Formats (`FORMATS`; `detect` picks one from the path):

- `dc`: the result file of the original DC/DSA/DM code, `torch.save({'data': [[images, labels], ...],
  'accs_all_exps': ...})`, one [images, labels] pair per experiment (`experiment` picks one); images
  normalised with the code's dataset constants (`SOURCE_NORMALIZATION`), so `dataset` is the default.
- `mtt`: trajectory matching's `images_best.pt` and `labels_best.pt` (a folder holding them, or either
  file), with the learned learning rate from `lr_best.pt` / `syn_lr.pt` beside them when present; same
  normalisation as DC's code.
- `tensors`: a `.pt` dict or `.npz` holding images (`images`/`x`/`image_syn`) and hard [N] or soft [N, K]
  labels (`labels`/`y`/`label_syn`), optionally `lr`; the normalisation must be stated.
- `folder`: one folder of PNGs per class (named by class index or class name; otherwise sorted order as
  torchvision's ImageFolder numbers them); pixels in [0, 1], so `none`.

The stated normalisation (`Normalization.parse`: `dataset`, `none`, `nasdd` or `MEAN,STD` /
`M1,M2,M3/S1,S2,S3`) is undone to pixels and the benchmark dataset's own is applied, in float32 exactly
as `nasdd.data` normalises real images. Files load with `torch.load(weights_only=True)` or
`numpy.load(allow_pickle=False)` only: a file that needs pickle is refused, as are shape, channel,
class-count and normalisation mismatches, each with one line.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasdd.data import DatasetBundle
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.registry import Registry
from nasdd.utils import file_sha256

# mean/std that the DC/DSA/DM code's utils.get_dataset (and trajectory matching, which reuses it) applies
SOURCE_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist5k": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
IMAGE_KEYS, LABEL_KEYS, LR_KEYS = ("images", "x", "image_syn"), ("labels", "y", "label_syn"), ("lr", "syn_lr")
PNG = (".png",)


@dataclass(frozen=True)
class Normalization:
    """What the images were saved in: `mean`/`std` per channel, or pixels in [0, 1] (`mean` None)."""

    text: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def pixels(self) -> bool:
        return self.mean is None

    @classmethod
    def parse(cls, text: str, bundle: DatasetBundle) -> Normalization:
        """`dataset` (the source code's constants for this dataset), `none` (pixels in [0, 1]), `nasdd` (the
        bundle's own), or explicit `MEAN,STD` (one channel) / `M1,M2,M3/S1,S2,S3`."""
        t = text.strip().lower()
        if t == "none":
            return cls("none")
        if t == "nasdd":
            return cls("nasdd", tuple(bundle.mean), tuple(bundle.std))
        if t == "dataset":
            if bundle.name not in SOURCE_NORMALIZATION:
                known = ", ".join(SOURCE_NORMALIZATION)
                raise NasddError(
                    f"the DC/DSA/DM code has no normalisation constants for {bundle.name} (it has {known}); "
                    "state them with `normalization` MEAN,STD or none",
                    params=("normalization",),
                )
            mean, std = SOURCE_NORMALIZATION[bundle.name]
            return cls(f"dataset ({bundle.name}: mean {list(mean)}, std {list(std)})", mean, std)
        try:
            if "/" in t:
                m, s = t.split("/")
                mean, std = tuple(float(v) for v in m.split(",")), tuple(float(v) for v in s.split(","))
            else:
                mean, std = (float(t.split(",")[0]),), (float(t.split(",")[1]),)
                if len(t.split(",")) != 2:
                    raise ValueError
        except (ValueError, IndexError):
            raise NasddError(
                f"`normalization` is dataset, none, nasdd, MEAN,STD or M1,M2,M3/S1,S2,S3, got {text!r}",
                params=("normalization",),
            ) from None
        if len(mean) != bundle.channels or len(std) != bundle.channels or min(std) <= 0:
            raise NasddError(
                f"`normalization` {text!r} gives {len(mean)} mean(s) and {len(std)} std(s); {bundle.name} has "
                f"{bundle.channels} channel(s) and every std must be > 0",
                params=("normalization",),
            )
        return cls(f"mean {list(mean)}, std {list(std)}", mean, std)


@dataclass
class Imported:
    """What a format reader found: images and labels as saved, an optional lr, the files read and the
    normalisation the format itself records (None: the user must state it)."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[Path]
    lr: float | None = None
    normalization: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


Reader = Callable[..., Imported]
FORMATS: Registry[Reader] = Registry("import format")


def load_tensors(path: Path) -> Any:
    """`torch.load(weights_only=True)`: a file holding a pickled Python object is refused in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        hint = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        raise NasddError(
            f"{path} holds a pickled Python object ({hint or 'not only tensors'}); nasdd loads tensors only "
            "(torch.load weights_only=True): save plain tensors, lists and dicts instead"
        ) from None
    except Exception as exc:  # torch raises many types for files that are not torch archives
        raise NasddError(f"{path} cannot be read as a torch file ({type(exc).__name__}: {exc})") from None


def _pick(d: dict, keys: tuple[str, ...], path: Path, what: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    raise NasddError(f"{path} holds no {what} (looked for {', '.join(keys)}; it has {', '.join(map(str, d))})")


def _tensor(v: Any, path: Path, what: str) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(v)
    if not isinstance(v, torch.Tensor):
        raise NasddError(f"{path}: {what} is a {type(v).__name__}, not a tensor or array")
    return v


def _lr(v: Any) -> float | None:
    if v is None:
        return None
    return float(torch.as_tensor(v).reshape(-1)[0])


@FORMATS.register("dc")
def read_dc(path: Path, experiment: int = 0) -> Imported:
    """The DC/DSA/DM code's `res_*.pt`: {'data': [[images, labels], ...], 'accs_all_exps': ...}."""
    d = load_tensors(path)
    if not isinstance(d, dict) or "data" not in d:
        raise NasddError(f"{path} is not a DC/DSA/DM result file (a dict with 'data' = list of [images, labels])")
    data = d["data"]
    if not isinstance(data, list | tuple) or not data:
        raise NasddError(f"{path}: 'data' holds no experiment ([images, labels] pairs)")
    if not 0 <= experiment < len(data):
        raise NasddError(
            f"{path} holds {len(data)} experiment(s); `experiment` must lie in 0..{len(data) - 1}",
            params=("experiment",),
        )
    pair = data[experiment]
    if not isinstance(pair, list | tuple) or len(pair) < 2:
        raise NasddError(f"{path}: data[{experiment}] is not an [images, labels] pair")
    images, labels = _tensor(pair[0], path, "images"), _tensor(pair[1], path, "labels")
    details = {"experiment": experiment, "experiments": len(data)}
    return Imported(images, labels, [path], normalization="dataset", details=details)


@FORMATS.register("mtt")
def read_mtt(path: Path, experiment: int = 0) -> Imported:
    """Trajectory matching's images_best.pt + labels_best.pt (+ lr_best.pt or syn_lr.pt when present)."""
    folder = path if path.is_dir() else path.parent
    files = [folder / "images_best.pt", folder / "labels_best.pt"]
    if missing := [f.name for f in files if not f.is_file()]:
        raise NasddError(f"{folder} lacks {', '.join(missing)} (trajectory matching saves both)")
    images, labels = (_tensor(load_tensors(f), f, f.stem) for f in files)
    lr = None
    for name in ("lr_best.pt", "syn_lr.pt"):
        if (folder / name).is_file():
            lr = _lr(load_tensors(folder / name))
            files.append(folder / name)
            break
    return Imported(images, labels, files, lr=lr, normalization="dataset")


@FORMATS.register("tensors")
def read_tensors(path: Path, experiment: int = 0) -> Imported:
    """A `.pt` dict or `.npz` of images and labels (hard or soft), optionally `lr`."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except ValueError as exc:
            if "pickle" in str(exc):
                raise NasddError(
                    f"{path} holds a pickled Python object (an object array); nasdd loads plain arrays only"
                ) from None
            raise NasddError(f"{path} cannot be read as .npz ({exc})") from None
        except (OSError, EOFError) as exc:
            raise NasddError(f"{path} cannot be read as .npz ({exc})") from None
    else:
        d = load_tensors(path)
        if not isinstance(d, dict):
            raise NasddError(f"{path} holds a {type(d).__name__}; expected a dict of images and labels")
    images = _tensor(_pick(d, IMAGE_KEYS, path, "images"), path, "images")
    labels = _tensor(_pick(d, LABEL_KEYS, path, "labels"), path, "labels")
    lr = next((_lr(d[k]) for k in LR_KEYS if k in d), None)
    return Imported(images, labels, [path], lr=lr)


@FORMATS.register("folder")
def read_folder(path: Path, experiment: int = 0, class_names: list[str] | None = None, channels: int = 1) -> Imported:
    """One sub-folder of PNGs per class, pixels read into [0, 1]."""
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise NasddError(f"{path} has no class folders (expected one folder of PNGs per class)")
    names = [c.name for c in classes]
    if all(n.isdigit() for n in names):
        index = {n: int(n) for n in names}
    elif class_names and set(names) <= set(class_names):
        index = {n: class_names.index(n) for n in names}
    else:
        index = {n: i for i, n in enumerate(names)}
    images, labels, files = [], [], []
    for c in classes:
        for f in sorted(p for p in c.iterdir() if p.suffix.lower() in PNG):
            with Image.open(f) as im:
                a = np.asarray(im.convert("L" if channels == 1 else "RGB"))
            images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            labels.append(index[c.name])
            files.append(f)
    if not images:
        raise NasddError(f"{path}: its class folders hold no PNG files")
    if len({im.shape for im in images}) != 1:
        raise NasddError(f"{path}: the PNGs differ in size or channels ({sorted({im.shape for im in images})[:3]})")
    x = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0)
    details = {"classes": {n: index[n] for n in names}}
    return Imported(x, torch.tensor(labels), files, normalization="none", details=details)


def detect(path: Path) -> str:
    """The format of `path`: a folder of class folders (`folder`), images_best.pt (`mtt`), a result file with
    'data' (`dc`), or another .pt / .npz (`tensors`)."""
    if not path.exists():
        raise NasddError(f"{path} does not exist")
    if path.is_dir():
        return "mtt" if (path / "images_best.pt").is_file() else "folder"
    if path.name in ("images_best.pt", "labels_best.pt"):
        return "mtt"
    if path.suffix == ".npz":
        return "tensors"
    d = load_tensors(path)
    return "dc" if isinstance(d, dict) and "data" in d else "tensors"


def _shape(images: torch.Tensor, bundle: DatasetBundle, source: str) -> torch.Tensor:
    want = (bundle.channels, bundle.image_size, bundle.image_size)
    if images.ndim == 3 and bundle.channels == 1:
        images = images[:, None]
    nhwc = images.ndim == 4 and images.shape[1] != want[0] and images.shape[-1] == want[0]
    if nhwc and tuple(images.shape[1:3]) == want[1:]:
        images = images.permute(0, 3, 1, 2)  # N H W C
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        have = "x".join(map(str, images.shape[1:])) if images.ndim == 4 else f"a {images.ndim}-d tensor"
        raise NasddError(
            f"{source}: images are {have} but {bundle.name} images are {'x'.join(map(str, want))} "
            "(channels x height x width); import a set made for this dataset"
        )
    if not images.is_floating_point():
        images = images.float()
    if not torch.isfinite(images).all():
        raise NasddError(f"{source}: images hold NaN or infinite values")
    return images.float()


def _labels(labels: torch.Tensor, n: int, k: int, source: str) -> torch.Tensor:
    if labels.ndim == 2:
        if labels.shape != (n, k):
            raise NasddError(f"{source}: soft labels are {tuple(labels.shape)}, expected ({n}, {k}) for {k} classes")
        return labels.float()
    if labels.ndim != 1 or len(labels) != n:
        raise NasddError(f"{source}: {n} images but labels of shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise NasddError(f"{source}: 1-d labels must be class indices, got fractional values")
        labels = labels.long()
    labels = labels.long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise NasddError(
            f"{source}: labels range {int(labels.min())}..{int(labels.max())} but the dataset has {k} classes "
            f"(0..{k - 1})"
        )
    return labels


def convert(images: torch.Tensor, norm: Normalization, bundle: DatasetBundle, source: str) -> torch.Tensor:
    """Images saved in `norm` -> the bundle's normalisation (float32, as `nasdd.data` normalises pixels)."""
    lo, hi = float(images.min()), float(images.max())
    if norm.pixels and (lo < -0.01 or hi > 1.01):
        raise NasddError(
            f"{source}: images span [{lo:.2f}, {hi:.2f}], not pixels in [0, 1] as `normalization` none says; "
            "they look normalised: state `normalization` dataset or MEAN,STD",
            params=("normalization",),
        )
    if not norm.pixels and lo >= 0 and hi <= 1:
        raise NasddError(
            f"{source}: images all lie in [0, 1], as unnormalised pixels do, but `normalization` {norm.text} "
            "says they were normalised; state `normalization` none",
            params=("normalization",),
        )
    if norm.text == "nasdd":
        return images.float().clone()
    x = images.double().numpy()
    if not norm.pixels:
        m = np.asarray(norm.mean, np.float64)[None, :, None, None]
        s = np.asarray(norm.std, np.float64)[None, :, None, None]
        x = x * s + m
    mean = np.asarray(bundle.mean, np.float32)[None, :, None, None]
    std = np.asarray(bundle.std, np.float32)[None, :, None, None]
    return torch.from_numpy((x.astype(np.float32) - mean) / std).float()


def import_proxy(
    path: str | Path,
    bundle: DatasetBundle,
    *,
    fmt: str | None = None,
    normalization: str | None = None,
    method: str = "imported",
    experiment: int = 0,
    lr: float | None = None,
) -> ProxySet:
    """Read a synthetic set saved by another codebase and return it as a ProxySet of `bundle`, with
    provenance naming the source files (and their SHA-256), the format and the normalisation converted."""
    path = Path(path)
    fmt = fmt or detect(path)
    reader = FORMATS.get(fmt)
    kw = {"class_names": list(bundle.class_names), "channels": bundle.channels} if fmt == "folder" else {}
    raw = reader(path, experiment=experiment, **kw)
    stated = normalization or raw.normalization
    if stated is None:
        raise NasddError(
            f"{path}: the {fmt} format does not record its normalisation; state `normalization`",
            params=("normalization",),
        )
    norm = Normalization.parse(stated, bundle)
    images = _shape(raw.images, bundle, str(path))
    labels = _labels(raw.labels, len(images), bundle.num_classes, str(path))
    images = convert(images, norm, bundle, str(path))
    lr = lr if lr is not None else raw.lr
    hard = labels.argmax(1) if labels.is_floating_point() else labels
    provenance = {
        "method": method,
        "dataset": bundle.name,
        "ipc": max(1, round(len(images) / bundle.num_classes)),
        "seed": None,
        "config": {},
        "cost": {"seconds": 0.0, "sample_grads": 0},
        "imported": {
            "format": fmt,
            "source": str(path.resolve()),
            "files": {str(f.resolve()): file_sha256(f) for f in raw.files[:50]},
            "files_count": len(raw.files),
            "normalization": norm.text,
            "lr": lr,
            "per_class": torch.bincount(hard, minlength=bundle.num_classes).tolist(),
            **raw.details,
        },
    }
    return ProxySet(images=images, labels=labels, meta=bundle.meta(), provenance=provenance, lr=lr)
