import pytest
import torch

from nasdd.distill import Saving, distill
from nasdd.distill.evaluate import evaluate_proxy, train_on_proxy
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.models import DEFAULT_ARCH
from nasdd.train import TrainRecipe, train_arch

KRR_METHODS = ("krr", "kip", "frepo")
RECIPE = TrainRecipe(epochs=100)


def _mean_acc(proxy, bundle) -> float:
    results = evaluate_proxy(proxy, bundle, recipe=RECIPE, seeds=range(3), device="cpu")
    return sum(r.accuracy for r in results) / len(results)


@pytest.mark.parametrize("method", KRR_METHODS)
def test_valid_proxy_and_reproducible(digits, method):
    a = distill(digits, method, 2, seed=1, preset="quick", iterations=4, device="cpu")
    b = distill(digits, method, 2, seed=1, preset="quick", iterations=4, device="cpu")
    assert a.images.shape == (20, digits.channels, digits.image_size, digits.image_size)
    assert torch.isfinite(a.images).all()
    assert torch.bincount(a.hard_labels, minlength=10).tolist() == [2] * 10
    assert torch.equal(a.images, b.images)
    assert a.provenance["cost"]["sample_grads"] > 0


@pytest.mark.parametrize("method", KRR_METHODS)
def test_beats_random_at_ipc1(digits, method):
    proxy = distill(digits, method, 1, seed=0, preset="quick", device="cpu")
    random = distill(digits, "random", 1, seed=0)
    assert _mean_acc(proxy, digits) > _mean_acc(random, digits)


def test_soft_labels_round_trip_and_train(digits, tmp_path):
    proxy = distill(digits, "krr", 1, seed=0, preset="quick", iterations=20, learn_labels=True, device="cpu")
    assert proxy.soft and proxy.labels.shape == (10, 10)
    assert torch.allclose(proxy.labels.sum(1), torch.ones(10))
    assert not torch.equal(proxy.labels, torch.nn.functional.one_hot(proxy.hard_labels, 10).float())
    loaded = ProxySet.load(proxy.save(tmp_path / "p"), digits)
    assert loaded.soft and torch.equal(loaded.labels, proxy.labels)
    recipe = TrainRecipe(epochs=5)
    used = train_on_proxy(loaded, digits, recipe=recipe, device="cpu")
    soft = train_arch(DEFAULT_ARCH, loaded.images, loaded.labels, recipe, num_classes=10, device="cpu")
    hard = train_arch(DEFAULT_ARCH, loaded.images, loaded.hard_labels, recipe, num_classes=10, device="cpu")
    assert used.train_loss == soft.train_loss != hard.train_loss


def test_frepo_resume_is_exact(digits, tmp_path):
    kw = {"preset": "quick", "learn_labels": True, "pool_size": 2, "max_online_steps": 3, "device": "cpu"}
    full = distill(digits, "frepo", 1, seed=0, iterations=8, **kw)
    distill(digits, "frepo", 1, iterations=4, saving=Saving(tmp_path, checkpoint_every=2, keep_checkpoint=True), **kw)
    resumed = distill(digits, "frepo", 1, iterations=8, saving=Saving(tmp_path, resume=True, overwrite=True), **kw)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.labels, resumed.labels)


def test_bad_options(digits):
    with pytest.raises(NasddError, match="valid losses"):
        distill(digits, "krr", 1, preset="quick", iterations=1, loss="hinge", device="cpu")
    with pytest.raises(NasddError, match="valid options"):
        distill(digits, "kip", 1, preset="quick", iterations=1, pool_size=3, device="cpu")
