import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

import nasdd.data as data
from nasdd.data import load_dataset, stratified_split
from nasdd.errors import NasddError

# ---------------------------------------------------------------------------------------------------
# Tiny fixtures in torchvision's on-disk formats (never downloaded).


def _idx_images(x: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x803, *x.shape) + x.astype(np.uint8).tobytes()


def _idx_labels(y: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes()


def _split_arrays(n_per_class: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class)
    x = rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8)
    return x, y


def _write_idx(folder, gz: bool = False) -> dict[str, np.ndarray]:
    """MNIST-style IDX files: 4 train and 2 test images per class, 28x28."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, seed in (("train", 4, 0), ("t10k", 2, 1)):
        x, y = _split_arrays(n, (28, 28), seed)
        arrays[split] = x
        for kind, blob in (("images-idx3", _idx_images(x)), ("labels-idx1", _idx_labels(y))):
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return arrays


def _write_cifar(root, hundred: bool) -> None:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    names = [f"class{i}" for i in range(10)]
    files = [("train", 4, 0), ("test", 2, 1)] if hundred else [("data_batch_1", 2, 0), ("data_batch_2", 2, 2)]
    files += [] if hundred else [("data_batch_3", 0, 3), ("data_batch_4", 0, 4), ("data_batch_5", 0, 5)]
    files += [] if hundred else [("test_batch", 2, 1)]
    for name, n, seed in files:
        x, y = _split_arrays(n, (3 * 32 * 32,), seed)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x, label_key: y.tolist()}, f)
    meta_name, meta_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: names}, f)


def _write_svhn(root) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 4, 0), ("test", 2, 1)):
        x, y = _split_arrays(n, (32, 32, 3), seed)
        y = np.where(y == 0, 10, y)  # SVHN stores the digit 0 as label 10
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y[:, None].astype(np.uint8)})


@pytest.fixture
def no_md5(monkeypatch):
    """The fixtures are not the real files: skip torchvision's md5 checks (existence is still required)."""
    import os

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    svhn_exists = lambda self: os.path.isfile(os.path.join(self.root, self.filename))  # noqa: E731
    monkeypatch.setattr("torchvision.datasets.SVHN._check_integrity", svhn_exists)


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails as it would without a network."""

    def fail(self, *args, **kwargs):
        raise OSError("network unreachable")

    import torchvision.datasets as tvd

    for cls in ("MNIST", "CIFAR10", "SVHN"):  # the other adapters' classes inherit these
        monkeypatch.setattr(getattr(tvd, cls), "download", fail)


def _check_bundle(b, channels: int, size: int, n_train: int, n_test: int) -> None:
    assert (b.channels, b.image_size, b.num_classes) == (channels, size, 10)
    assert len(b.y_train) + len(b.y_val) == n_train and len(b.y_test) == n_test
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.long
    assert set(b.y_test.tolist()) == set(range(10))
    # normalised with train statistics
    assert b.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert torch.allclose(b.x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(channels), atol=1e-3)


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("kmnist", "KMNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_like_adapters_read_idx_files(tmp_path, monkeypatch, offline, name, folder):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    arrays = _write_idx(tmp_path / folder / "raw")
    b = load_dataset(name, root=tmp_path)
    _check_bundle(b, 1, 28, 40, 20)
    # pixels survive the round trip: the test split is stored in file order
    assert torch.allclose(b.denormalize(b.x_test)[:, 0], torch.from_numpy(arrays["t10k"] / 255.0).float(), atol=1e-5)
    if name == "fashion_mnist":
        assert b.class_names[0] == "T-shirt/top"


def test_fashion_mnist_reads_debian_package_offline_in_place(tmp_path, monkeypatch, offline):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = _write_idx(debian, gz=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.chdir(tmp_path)
    b = load_dataset("fashion_mnist", root=tmp_path / "root")
    _check_bundle(b, 1, 28, 40, 20)
    assert torch.allclose(b.denormalize(b.x_test)[:, 0], torch.from_numpy(arrays["t10k"] / 255.0).float(), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usr-share-datasets-fashion-mnist"]  # nothing written


def test_downloads_default_to_a_documented_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("NASDD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.default_root() == tmp_path / "cache" / "nasdd" / "data"
    monkeypatch.setenv("NASDD_DATA", str(tmp_path / "d"))
    assert data.default_root() == tmp_path / "d"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_adapters_read_pickled_batches(tmp_path, no_md5, offline, name):
    _write_cifar(tmp_path, hundred=name == "cifar100")
    b = load_dataset(name, root=tmp_path)
    _check_bundle(b, 3, 32, 40, 20)
    assert b.class_names == [f"class{i}" for i in range(10)]


def test_svhn_adapter_reads_mat_files(tmp_path, no_md5, offline):
    _write_svhn(tmp_path)
    b = load_dataset("svhn", root=tmp_path)
    _check_bundle(b, 3, 32, 40, 20)


@pytest.mark.parametrize("name", ["mnist", "kmnist", "fashion_mnist", "cifar10", "cifar100", "svhn"])
def test_missing_files_offline_say_how_to_get_them(tmp_path, monkeypatch, offline, name):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(NasddError, match="could not be downloaded.*`data_root`") as err:
        load_dataset(name, root=tmp_path)
    assert ("apt install dataset-fashion-mnist" in str(err.value)) == (name == "fashion_mnist")


def test_max_per_class_caps_train_pool_only(tmp_path, offline):
    _write_idx(tmp_path / "MNIST" / "raw")
    b = load_dataset("mnist", root=tmp_path, max_per_class=2)
    counts = torch.bincount(torch.cat([b.y_train, b.y_val]), minlength=10)
    assert counts.tolist() == [2] * 10
    assert len(b.y_test) == 20  # test stays whole
    assert b.config["max_per_class"] == 2
    with pytest.raises(NasddError, match="`max_per_class` must be a positive integer"):
        load_dataset("mnist", root=tmp_path, max_per_class=0)


# ---------------------------------------------------------------------------------------------------
# Bundled sources and splits


def test_digits_bundle(digits):
    assert repr(digits) == "DatasetBundle(digits: 1x8x8, 10 classes, train 1295, val 143, test 359)"
    assert digits.meta()["dataset_key"] == digits.key and digits.key.startswith("digits-")
    x, y = digits.split("val")
    assert x is digits.x_val and y is digits.y_val
    assert sum(len(i) for i in digits.class_indices()) == len(digits.y_train)
    with pytest.raises(NasddError, match="valid splits"):
        digits.split("holdout")


def test_mnist5k_bundle():
    b = load_dataset("mnist5k")
    assert repr(b) == "DatasetBundle(mnist5k: 1x28x28, 10 classes, train 3600, val 400, test 1000)"
    assert torch.bincount(b.y_test).tolist() == [100] * 10


def test_splits_are_stratified_disjoint_and_deterministic(digits):
    other = load_dataset("digits", split_seed=1)
    again = load_dataset.__wrapped__("digits")  # bypass the cache: a fresh load gives the same split
    assert torch.equal(again.x_val, digits.x_val) and torch.equal(again.y_train, digits.y_train)
    assert not torch.equal(other.x_val, digits.x_val)
    assert other.key != digits.key
    # stratified: every class is in every split in proportion (+-1 image per class from rounding)
    for split in ("train", "val", "test"):
        counts = torch.bincount(digits.split(split)[1], minlength=10).float()
        share = counts / counts.sum()
        assert (share - 0.1).abs().max() < 0.02, (split, counts)
    # disjoint: no image appears in two splits
    rows = {s: {tuple(r.tolist()) for r in digits.split(s)[0].flatten(1)} for s in ("train", "val", "test")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_stratified_split_small_classes():
    y = np.array([0, 0, 1, 1, 1, 2])
    keep, held = stratified_split(y, 0.1, seed=3)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(6))
    assert sorted(y[held].tolist()) == [0, 1]  # one held out per class with >= 2 images; the singleton kept
    assert np.array_equal(stratified_split(y, 0.1, seed=3)[1], held)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(NasddError) as err:
        load_dataset("mnist6k")
    msg = str(err.value)
    assert "mnist6k" in msg and all(n in msg for n in ("digits", "mnist5k", "fashion_mnist", "imagefolder:PATH"))


@pytest.mark.parametrize(("key", "value"), [("val_fraction", 0.0), ("val_fraction", 1.5), ("test_fraction", 1.0)])
def test_bad_fractions(key, value):
    with pytest.raises(NasddError, match=key):
        load_dataset("digits", **{key: value})


# ---------------------------------------------------------------------------------------------------
# imagefolder


def _write_folder(root, colour: bool = False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "emu"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            shape = (12, 10, 3) if colour else (12, 10)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("colour", [False, True])
def test_imagefolder(tmp_path, colour):
    root = _write_folder(tmp_path / "imgs", colour)
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    b = load_dataset(f"imagefolder:{root}", image_size=16)
    assert b.class_names == ["cat", "dog", "emu"]
    assert (b.channels, b.image_size) == (3 if colour else 1, 16)
    assert len(b.y_train) + len(b.y_val) + len(b.y_test) == 15
    assert set(b.y_test.tolist()) == {0, 1, 2}


def test_imagefolder_missing(tmp_path):
    with pytest.raises(NasddError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "flat").mkdir()
    with pytest.raises(NasddError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}")


def test_imagefolder_empty_class_names_folder(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    (root / "fox").mkdir()
    with pytest.raises(NasddError, match=r"class folder .*fox holds no images"):
        load_dataset(f"imagefolder:{root}")


def test_imagefolder_unreadable_image_names_file(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    (root / "dog" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(NasddError, match=r"cannot read image .*dog.broken\.png"):
        load_dataset(f"imagefolder:{root}")
