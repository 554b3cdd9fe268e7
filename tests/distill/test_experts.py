import json

import pytest
import torch

import nasdd.distill.experts as experts
from nasdd.arch import ArchSpec
from nasdd.cli import main
from nasdd.distill.experts import EXPERT_RECIPE, buffer_folder, train_experts, whiten, zca_matrix
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe

TINY = ArchSpec.make("convnet", depth=1, width=8)


@pytest.fixture
def fit_calls(monkeypatch):
    """Count the trainer calls the expert module makes (the real trainer still runs)."""
    calls = []
    real = experts.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(experts, "fit", counting_fit)
    return calls


def test_buffer_is_written_and_reused(digits, tmp_path, fit_calls):
    buf = train_experts(digits, arch=TINY, num_experts=2, epochs=2, root=tmp_path, device="cpu")
    assert len(fit_calls) == 4 and buf.trained_epochs == 4
    assert [t.shape[0] for t in buf.trajectories] == [3, 3]
    assert not torch.equal(buf.trajectories[0][0], buf.trajectories[0][2])  # training moved the weights
    assert buf.sample_grads == 4 * len(digits.x_train) and buf.seconds > 0
    manifest = json.loads((buf.folder / "buffer.json").read_text())
    assert manifest["experts"] == 2 and manifest["cost"]["sample_grads"] == buf.sample_grads
    assert buf.folder.parent.name == digits.key and buf.folder.parent.parent == tmp_path / "experts"

    again = train_experts(digits, arch=TINY, num_experts=2, epochs=2, root=tmp_path, device="cpu")
    assert len(fit_calls) == 4 and again.trained_epochs == 0  # the second call trains nothing
    assert all(torch.equal(a, b) for a, b in zip(buf.trajectories, again.trajectories, strict=True))
    assert again.sample_grads == buf.sample_grads  # the stored cost is reported, not zero

    longer = train_experts(digits, arch=TINY, num_experts=2, epochs=3, root=tmp_path, device="cpu")
    assert len(fit_calls) == 6 and longer.trained_epochs == 2  # only the missing epochs are trained
    assert torch.equal(longer.trajectories[1][:3], buf.trajectories[1])


def test_experts_reproducible_and_distinct(digits, tmp_path):
    a = train_experts(digits, arch=TINY, num_experts=2, epochs=1, root=tmp_path / "a", device="cpu")
    b = train_experts(digits, arch=TINY, num_experts=2, epochs=1, root=tmp_path / "b", device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.trajectories, b.trajectories, strict=True))
    assert not torch.equal(a.trajectories[0], a.trajectories[1])


def test_buffer_key_separates_settings(digits, tmp_path):
    base = buffer_folder(tmp_path, digits, TINY, EXPERT_RECIPE)
    assert buffer_folder(tmp_path, digits, TINY, EXPERT_RECIPE, zca=True) != base
    assert buffer_folder(tmp_path, digits, TINY, TrainRecipe.parse("lr=0.02", EXPERT_RECIPE)) != base
    assert buffer_folder(tmp_path, digits, ArchSpec.make("convnet", depth=1, width=4), EXPERT_RECIPE) != base
    assert buffer_folder(tmp_path, digits, TINY, TrainRecipe.parse("epochs=9", EXPERT_RECIPE)) == base


def test_non_plain_sgd_recipe_is_refused(digits, tmp_path):
    with pytest.raises(NasddError, match="plain SGD"):
        train_experts(digits, arch=TINY, num_experts=1, epochs=1, root=tmp_path, recipe=TrainRecipe(momentum=0.9))


def test_zca_whitens(digits):
    w = zca_matrix(digits.x_train, eps=1e-3)
    flat = whiten(digits.x_train, w).flatten(1)
    cov = torch.cov(flat.T)
    assert torch.linalg.eigvalsh(cov).max() < 1.1  # whitened: no direction with more than unit variance


def test_cli(digits, tmp_path, capsys):
    arch = TINY.to_json()
    args = ["experts", "--dataset", "digits", "--arch", arch, "--num-experts", "1", "--epochs", "1"]
    assert main([*args, "--buffer-root", str(tmp_path), "--quiet", "--device", "cpu"]) == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    assert main([*args, "--buffer-root", str(tmp_path), "--quiet", "--device", "cpu"]) == 0
    assert "trained 0 epochs" in capsys.readouterr().out
    assert main(["experts", "--dataset", "digits", "--arch", "{bad", "--buffer-root", str(tmp_path)]) == 2


def test_buffers_default_to_the_cache_not_the_working_directory(digits, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = buffer_folder(None, digits, TINY, EXPERT_RECIPE)
    assert folder.is_relative_to(tmp_path / "cache" / "nasdd" / "experts")
