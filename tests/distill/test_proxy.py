import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from nasdd.distill import distill
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError


@pytest.fixture
def saved(digits, tmp_path):
    proxy = distill(digits, "random", 2, seed=3)
    proxy.lr = 0.05
    proxy.labels = torch.softmax(torch.randn(len(proxy.images), 10), 1)
    return proxy, proxy.save(tmp_path / "p")


def test_round_trip_keeps_soft_labels_lr_and_provenance(digits, saved):
    proxy, folder = saved
    back = ProxySet.load(folder, digits)
    assert torch.equal(back.images, proxy.images) and torch.equal(back.labels, proxy.labels)
    assert back.soft and back.lr == 0.05 and back.id == proxy.id
    assert back.provenance["method"] == "random" and back.provenance["ipc"] == 2
    assert "nasdd_version" in back.provenance and back.provenance["cost"]["sample_grads"] == 0
    assert ProxySet.load(folder / "proxy.json").id == proxy.id


def test_truncated_file_is_refused(saved):
    _, folder = saved
    data = (folder / "proxy.pt").read_bytes()
    (folder / "proxy.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(NasddError, match="proxy.pt is damaged: its checksum"):
        ProxySet.load(folder)


def test_bit_flip_is_refused(saved):
    _, folder = saved
    data = bytearray((folder / "proxy.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "proxy.pt").write_bytes(bytes(data))
    with pytest.raises(NasddError, match="damaged"):
        ProxySet.load(folder)


def test_edited_sidecar_is_refused(saved):
    _, folder = saved
    side = json.loads((folder / "proxy.json").read_text())
    side["lr"] = 0.5
    (folder / "proxy.json").write_text(json.dumps(side))
    with pytest.raises(NasddError, match="proxy.json was edited"):
        ProxySet.load(folder)
    (folder / "proxy.json").write_text("{not json")
    with pytest.raises(NasddError, match="proxy.json is damaged"):
        ProxySet.load(folder)


def test_missing_files_and_dataset_mismatch_are_refused(digits, saved, tmp_path):
    _, folder = saved
    with pytest.raises(NasddError, match="not a proxy folder"):
        ProxySet.load(tmp_path)
    other = replace(digits, name="digits-other", class_names=digits.class_names[:5])
    with pytest.raises(NasddError, match="proxy was made for digits"):
        ProxySet.load(folder, other)


def test_grid_png_is_valid(digits, tmp_path):
    proxy = distill(digits, "random", 2, seed=3)
    path = proxy.save_grid(tmp_path / "grid.png")
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
    assert w == 2 * (8 + 1) + 1 and h == 10 * (8 + 1) + 1  # 2 columns, 10 rows of 8x8 tiles, 1px padding
