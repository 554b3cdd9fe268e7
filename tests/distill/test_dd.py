import json

import pytest
import torch

from nasdd.distill import Saving, distill
from nasdd.distill.evaluate import evaluate_proxy, proxy_recipe
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe

RECIPE = TrainRecipe(epochs=100)


def _mean_acc(proxy, bundle) -> float:
    results = evaluate_proxy(proxy, bundle, recipe=RECIPE, seeds=range(3), device="cpu")
    return sum(r.accuracy for r in results) / len(results)


def test_valid_proxy_and_reproducible(digits):
    a = distill(digits, "dd", 2, seed=1, preset="quick", iterations=3, device="cpu")
    b = distill(digits, "dd", 2, seed=1, preset="quick", iterations=3, device="cpu")
    assert a.images.shape == (20, digits.channels, digits.image_size, digits.image_size)
    assert torch.isfinite(a.images).all() and torch.equal(a.images, b.images)
    assert torch.bincount(a.hard_labels, minlength=10).tolist() == [2] * 10
    steps = a.provenance["learned_step_lrs"]
    assert len(steps) == a.provenance["config"]["unroll_steps"] and a.lr is None
    assert a.provenance["cost"]["sample_grads"] > 0


def test_truncated_unroll_changes_the_gradient(digits):
    full = distill(digits, "dd", 1, seed=0, preset="quick", iterations=2, device="cpu")
    cut = distill(digits, "dd", 1, seed=0, preset="quick", iterations=2, truncate=1, device="cpu")
    assert not torch.equal(full.images, cut.images)
    assert cut.provenance["cost"]["sample_grads"] < full.provenance["cost"]["sample_grads"]


def test_beats_random_at_ipc1(digits):
    proxy = distill(digits, "dd", 1, seed=0, preset="quick", device="cpu")
    random = distill(digits, "random", 1, seed=0)
    assert _mean_acc(proxy, digits) > _mean_acc(random, digits)


def test_learned_labels_and_exported_lr_round_trip(digits, tmp_path):
    proxy = distill(
        digits, "dd", 1, seed=0, preset="quick", iterations=5, learn_labels=True, export_lr=True, device="cpu"
    )
    assert proxy.soft and torch.allclose(proxy.labels.sum(1), torch.ones(10))
    assert proxy.lr == pytest.approx(sum(proxy.provenance["learned_step_lrs"]) / 5, rel=1e-4)
    loaded = ProxySet.load(proxy.save(tmp_path / "p"), digits)
    assert torch.equal(loaded.labels, proxy.labels) and loaded.lr == proxy.lr
    assert proxy_recipe(loaded, RECIPE).lr == proxy.lr
    assert json.loads((tmp_path / "p" / "proxy.json").read_text())["soft_labels"] is True


def test_resume_with_learned_labels_is_exact(digits, tmp_path):
    kw = {"preset": "quick", "learn_labels": True, "device": "cpu"}
    full = distill(digits, "dd", 1, seed=0, iterations=4, **kw)
    distill(digits, "dd", 1, iterations=2, saving=Saving(tmp_path, checkpoint_every=1, keep_checkpoint=True), **kw)
    resumed = distill(digits, "dd", 1, iterations=4, saving=Saving(tmp_path, resume=True, overwrite=True), **kw)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.labels, resumed.labels)
    assert full.provenance["learned_step_lrs"] == resumed.provenance["learned_step_lrs"]


def test_bad_options(digits):
    with pytest.raises(NasddError, match="truncate"):
        distill(digits, "dd", 1, preset="quick", iterations=1, truncate=99, device="cpu")
    with pytest.raises(NasddError, match="label_temperature"):
        distill(digits, "dd", 1, preset="quick", iterations=1, label_temperature=0, device="cpu")
