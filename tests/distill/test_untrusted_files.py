"""Files nasdd reads back (checkpoints, expert buffers, proxies) load without pickle: a tampered file
holding a pickled object, or one from a newer format, is refused with one line and runs nothing."""

import json
import os

import pytest
import torch

from nasdd.arch import ArchSpec
from nasdd.distill import Saving, distill
from nasdd.distill.base import CHECKPOINT
from nasdd.distill.experts import EXPERT_RECIPE, buffer_folder, train_experts
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.utils import stable_hash

QUICK = {"iterations": 2, "batch_real": 16}
TINY = ArchSpec.make("convnet", depth=1, width=8)


class Payload:
    """Unpickling this runs a shell command that creates `marker`: what a tampered file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tamper(path, marker, **extra):
    """Replace a torch file by one that keeps its contents and adds a pickled object."""
    state = torch.load(path, weights_only=True)
    torch.save({**state, **extra, "payload": Payload(marker)}, path)


def one_line(exc):
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_tampered_checkpoint_is_refused_and_runs_nothing(digits, tmp_path):
    distill(digits, "dm", 1, seed=0, saving=Saving(out=tmp_path, keep_checkpoint=True, checkpoint_every=1), **QUICK)
    marker = tmp_path / "pwned"
    tamper(tmp_path / CHECKPOINT, marker)
    with pytest.raises(NasddError) as exc:
        distill(digits, "dm", 1, seed=0, saving=Saving(tmp_path, True, True, checkpoint_every=1), **QUICK)
    assert "holds objects other than tensors" in one_line(exc) and "delete it to start over" in str(exc.value)
    assert not marker.exists()


def test_newer_checkpoint_format_is_refused(digits, tmp_path):
    distill(digits, "dm", 1, seed=0, saving=Saving(out=tmp_path, keep_checkpoint=True, checkpoint_every=1), **QUICK)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["format"] == 1
    torch.save({**state, "format": 99}, tmp_path / CHECKPOINT)
    with pytest.raises(NasddError, match="is format 99, this nasdd reads up to 1") as exc:
        distill(digits, "dm", 1, seed=0, saving=Saving(tmp_path, True, True, checkpoint_every=1), **QUICK)
    one_line(exc)


def test_tampered_expert_file_is_refused(digits, tmp_path):
    train_experts(digits, arch=TINY, num_experts=1, epochs=1, root=tmp_path, device="cpu")
    path = buffer_folder(tmp_path, digits, TINY, EXPERT_RECIPE) / "expert_0.pt"
    marker = tmp_path / "pwned"
    tamper(path, marker)
    with pytest.raises(NasddError, match="expert file .* holds objects other than tensors") as exc:
        train_experts(digits, arch=TINY, num_experts=1, epochs=1, root=tmp_path, device="cpu")
    one_line(exc)
    assert not marker.exists()
    torch.save({**torch.load(path, weights_only=False), "format": 2}, path)  # our own test file: trusted
    assert marker.exists()  # (the payload was real: loading it with pickle ran it)
    with pytest.raises(NasddError, match="is format 2"):
        train_experts(digits, arch=TINY, num_experts=1, epochs=1, root=tmp_path, device="cpu")


def test_tampered_proxy_with_a_matching_checksum_is_refused(digits, tmp_path):
    """An attacker can rewrite the sidecar's checksums too: the pickle guard is what stops the payload."""
    folder = distill(digits, "random", 2, seed=0).save(tmp_path / "p")
    marker = tmp_path / "pwned"
    tamper(folder / "proxy.pt", marker)
    from nasdd.utils import file_sha256

    side = json.loads((folder / "proxy.json").read_text())
    side["sha256"] = file_sha256(folder / "proxy.pt")
    side["digest"] = stable_hash({k: v for k, v in side.items() if k != "digest"}, 64)
    (folder / "proxy.json").write_text(json.dumps(side))
    with pytest.raises(NasddError, match="proxy data .* holds objects other than tensors") as exc:
        ProxySet.load(folder)
    one_line(exc)
    assert not marker.exists()


def test_proxy_from_a_newer_format_is_refused(digits, tmp_path):
    folder = distill(digits, "random", 2, seed=0).save(tmp_path / "p")
    side = json.loads((folder / "proxy.json").read_text())
    side["format"] = 7
    (folder / "proxy.json").write_text(json.dumps(side))
    with pytest.raises(NasddError, match="format 7, this nasdd reads up to 2") as exc:
        ProxySet.load(folder)
    one_line(exc)
