"""Importing other codebases' synthetic sets (nasdd.distill.importers, `nasdd import-proxy`), on digits."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from nasdd.cli import main
from nasdd.distill import ProxySet, distill
from nasdd.distill.importers import SOURCE_NORMALIZATION, Normalization, import_proxy
from nasdd.errors import NasddError
from nasdd.utils import file_sha256


@pytest.fixture(scope="module")
def subset(digits):
    return distill(digits, "random", ipc=5, seed=0)


def pixels(proxy, bundle) -> torch.Tensor:
    """The proxy's images as [0, 1] pixels (float64)."""
    mean = torch.tensor(bundle.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std, dtype=torch.float64).view(1, -1, 1, 1)
    return proxy.images.double() * std + mean


def expected(saved: torch.Tensor, mean: float | None, std: float | None, bundle) -> torch.Tensor:
    """The stated normalisation undone in float64, the bundle's applied in float32 (as nasdd.data does)."""
    p = saved.double().numpy()
    if mean is not None:
        p = p * std + mean
    m, s = np.float32(bundle.mean[0]), np.float32(bundle.std[0])
    return torch.from_numpy((p.astype(np.float32) - m) / s)


def dc_file(path, images, labels, experiments=1):
    """A result file in exactly the structure the DC/DSA/DM code writes with torch.save."""
    data_save = [[images.detach().cpu().clone(), labels.detach().cpu().clone()] for _ in range(experiments)]
    accs_all_exps = {"ConvNet": [0.81, 0.82]}
    torch.save({"data": data_save, "accs_all_exps": accs_all_exps}, path)
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_dc_file_round_trips_after_its_normalisation(digits, subset, tmp_path):
    saved = ((pixels(subset, digits) - 0.3) / 0.4).float()
    path = dc_file(tmp_path / "res_DSA_digits_ConvNet_5ipc.pt", saved, subset.labels, experiments=2)
    proxy = import_proxy(path, digits, normalization="0.3,0.4", method="dsa", experiment=1)
    assert torch.equal(proxy.images, expected(saved, 0.3, 0.4, digits))
    assert torch.allclose(proxy.images, subset.images, atol=1e-5)  # back where nasdd's own subset was
    assert torch.equal(proxy.labels, subset.labels)
    imp = proxy.provenance["imported"]
    assert imp["format"] == "dc" and imp["experiment"] == 1 and imp["experiments"] == 2
    assert list(imp["files"].values()) == [file_sha256(path)]
    assert proxy.provenance["method"] == "dsa" and proxy.ipc == 5
    again = ProxySet.load(proxy.save(tmp_path / "p"), digits)  # checksummed like any ProxySet
    assert torch.equal(again.images, proxy.images) and again.provenance["imported"]["normalization"]


def test_dc_default_is_the_source_codes_constants(digits, subset, tmp_path):
    """`dataset` reads the DC code's constants; digits has none, so it says so in one line."""
    path = dc_file(tmp_path / "res.pt", subset.images, subset.labels)
    with pytest.raises(NasddError) as e:
        import_proxy(path, digits)
    assert "no normalisation constants for digits" in one_line(e)
    fashion = replace_name(digits, "fashion_mnist")
    norm = Normalization.parse("dataset", fashion)
    assert (norm.mean, norm.std) == SOURCE_NORMALIZATION["fashion_mnist"] == ((0.2861,), (0.3530,))
    saved = ((pixels(subset, digits) - 0.2861) / 0.3530).float()
    proxy = import_proxy(dc_file(tmp_path / "res2.pt", saved, subset.labels), fashion)
    assert torch.equal(proxy.images, expected(saved, 0.2861, 0.3530, fashion))


def replace_name(bundle, name):
    """The digits bundle under another dataset's name (its tensors and shapes unchanged)."""
    return replace(bundle, name=name)


def test_mtt_files_with_learned_lr(digits, subset, tmp_path):
    saved = ((pixels(subset, digits) - 0.5) / 0.25).float()
    torch.save(saved, tmp_path / "images_best.pt")
    torch.save(subset.labels, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0123), tmp_path / "lr_best.pt")
    proxy = import_proxy(tmp_path / "images_best.pt", digits, normalization="0.5,0.25", method="mtt")
    assert proxy.provenance["imported"]["format"] == "mtt"
    assert torch.equal(proxy.images, expected(saved, 0.5, 0.25, digits))
    assert torch.equal(proxy.labels, subset.labels) and proxy.lr == pytest.approx(0.0123)


def test_tensor_files_hard_and_soft_labels(digits, subset, tmp_path):
    p = pixels(subset, digits).float()
    np.savez(tmp_path / "set.npz", images=p.numpy(), labels=subset.labels.numpy())
    proxy = import_proxy(tmp_path / "set.npz", digits, normalization="none")
    assert torch.equal(proxy.images, expected(p, None, None, digits)) and torch.equal(proxy.labels, subset.labels)
    soft = torch.softmax(torch.randn(len(p), 10), 1)
    torch.save({"x": subset.images, "y": soft, "lr": 0.02}, tmp_path / "soft.pt")
    proxy = import_proxy(tmp_path / "soft.pt", digits, normalization="nasdd")
    assert torch.equal(proxy.images, subset.images) and torch.equal(proxy.labels, soft) and proxy.soft
    assert proxy.lr == pytest.approx(0.02)
    with pytest.raises(NasddError) as e:
        import_proxy(tmp_path / "soft.pt", digits)
    assert "state `normalization`" in one_line(e)


def test_png_folder(digits, subset, tmp_path):
    u8 = (pixels(subset, digits).clamp(0, 1) * 255).round().to(torch.uint8)
    for i, (img, y) in enumerate(zip(u8, subset.labels, strict=True)):
        (tmp_path / str(int(y))).mkdir(exist_ok=True)
        Image.fromarray(img[0].numpy(), mode="L").save(tmp_path / str(int(y)) / f"{i:03d}.png")
    proxy = import_proxy(tmp_path, digits)
    order = torch.argsort(subset.labels, stable=True)  # read back class by class, files in name order
    assert proxy.provenance["imported"]["format"] == "folder"
    assert torch.equal(proxy.labels, subset.labels[order])
    assert torch.equal(proxy.images, expected(u8[order].float() / 255, None, None, digits))


class Thing:
    pass


def test_pickled_objects_are_refused(digits, subset, tmp_path):
    torch.save({"data": [[subset.images, subset.labels]], "args": Thing()}, tmp_path / "res.pt")
    with pytest.raises(NasddError) as e:
        import_proxy(tmp_path / "res.pt", digits, normalization="nasdd")
    assert "pickled Python object" in one_line(e)
    np.savez(tmp_path / "obj.npz", images=np.array([Thing()], dtype=object), labels=np.zeros(1))
    with pytest.raises(NasddError) as e:
        import_proxy(tmp_path / "obj.npz", digits, normalization="none")
    assert "pickled" in one_line(e)


@pytest.mark.parametrize(
    "images, labels, norm, says",
    [
        ("rgb", "ok", "nasdd", "images are 3x8x8 but digits images are 1x8x8"),
        ("ok", "class12", "nasdd", "labels range 0..12 but the dataset has 10 classes"),
        ("ok", "soft7", "nasdd", "soft labels are (50, 7), expected (50, 10)"),
        ("ok", "short", "nasdd", "50 images but labels of shape (49,)"),
        ("ok", "ok", "none", "not pixels in [0, 1]"),
        ("pixels", "ok", "nasdd", "images all lie in [0, 1]"),
        ("ok", "ok", "0.1,0.2,0.3", "`normalization` is dataset, none, nasdd"),
        ("ok", "ok", "0.1,0.2/0.3,0.4", "digits has 1 channel(s)"),
    ],
)
def test_mismatches_are_one_line(digits, subset, tmp_path, images, labels, norm, says):
    x = {"ok": subset.images, "rgb": subset.images.repeat(1, 3, 1, 1), "pixels": pixels(subset, digits).float()}
    y = {
        "ok": subset.labels,
        "class12": torch.where(subset.labels == 3, 12, subset.labels),
        "soft7": torch.rand(len(subset.labels), 7),
        "short": subset.labels[:-1],
    }
    path = dc_file(tmp_path / "res.pt", x[images], y[labels])
    with pytest.raises(NasddError) as e:
        import_proxy(path, digits, normalization=norm)
    assert says in one_line(e)


def test_import_proxy_command(digits, subset, tmp_path, capsys):
    path = dc_file(tmp_path / "res.pt", subset.images, subset.labels)
    out = tmp_path / "imported"
    argv = ["import-proxy", str(path), "--dataset", "digits", "--normalization", "nasdd", "--method", "dm"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert torch.equal(ProxySet.load(out, digits).images, subset.images)
    assert "imported 50 images (dc" in capsys.readouterr().out
    bad = ["import-proxy", str(tmp_path / "nope.pt"), "--dataset", "digits", "--out", str(out)]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasdd import-proxy: error:") and "does not exist" in err and "\n" not in err
