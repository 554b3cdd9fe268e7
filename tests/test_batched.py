import math

import pytest

from nasdd.arch import ArchSpec
from nasdd.batched import fit_seeds
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe, train_arch


@pytest.mark.parametrize(
    ("normalization", "augment"), [("instancenorm", None), ("batchnorm", "dsa"), ("layernorm", None)]
)
def test_fit_seeds_equals_separate_trainings(digits, normalization, augment):
    """Same init, batch order, augmentation and schedule per seed as `train_arch`, up to float rounding."""
    spec = ArchSpec.make("convnet", depth=2, width=8, normalization=normalization, pooling="avgpool")
    x, y = digits.x_train[:200], digits.y_train[:200]
    recipe = TrainRecipe(epochs=3, batch_size=64, lr=0.05, augment=augment)
    val = digits.split("val")
    batched = fit_seeds(spec, x, y, recipe, num_classes=10, seeds=[0, 1, 2], eval_data=val)
    for seed, b in zip([0, 1, 2], batched, strict=True):
        s = train_arch(spec, x, y, recipe, num_classes=10, seed=seed, eval_data=val, compile_model=False)
        assert b.ok and (b.steps, b.sample_grads, b.params, b.flops_per_sample) == (
            s.steps,
            s.sample_grads,
            s.params,
            s.flops_per_sample,
        )
        assert b.accuracy == pytest.approx(s.accuracy, abs=0.01)
        assert b.train_loss == pytest.approx(s.train_loss, rel=1e-3, abs=1e-5)
    assert len({b.train_loss for b in batched}) == 3


def test_fit_seeds_failed_seed_like_fit(digits):
    spec = ArchSpec.make("convnet", depth=2, width=8)
    x, y = digits.x_train[:128], digits.y_train[:128]
    recipe, val = TrainRecipe(epochs=3, lr=1e30), digits.split("val")
    (res,) = fit_seeds(spec, x, y, recipe, num_classes=10, seeds=[0], eval_data=val)
    ref = train_arch(spec, x, y, recipe, num_classes=10, seed=0, eval_data=val)
    assert res.status == ref.status == "failed" and "non-finite training loss" in res.error
    assert res.steps == ref.steps and math.isnan(res.accuracy)


def test_fit_seeds_bad_input(digits):
    spec = ArchSpec.make("convnet", depth=1, width=8)
    with pytest.raises(NasddError, match="distinct seeds"):
        fit_seeds(spec, digits.x_train, digits.y_train, TrainRecipe(steps=1), num_classes=10, seeds=[1, 1])
    with pytest.raises(NasddError, match="empty"):
        fit_seeds(spec, digits.x_train[:0], digits.y_train[:0], TrainRecipe(steps=1), num_classes=10, seeds=[0])
