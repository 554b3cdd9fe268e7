import math

import pytest

from nasdd.errors import NasddError
from nasdd.train import TrainRecipe
from nasdd.validate.budget import amortised, break_even, budget_recipe, parse_fraction, training_grads

PROXY = TrainRecipe.parse("proxy")
TRUTH = 12 * 54_000  # one Fashion-MNIST truth training of the ranking benchmark


@pytest.mark.parametrize("frac", [1 / 10, 1 / 30, 1 / 100, 1 / 300])
@pytest.mark.parametrize("n", [10, 100, 500, 54_000])
def test_every_budget_recipe_lands_within_five_percent(frac, n):
    grads = frac * TRUTH
    recipe = budget_recipe(PROXY, n, grads)
    assert abs(training_grads(recipe, n) - grads) <= 0.05 * grads
    assert recipe.lr == PROXY.lr and recipe.schedule == PROXY.schedule


def test_training_grads_counts_like_the_trainer(digits):
    from nasdd.arch import ArchSpec
    from nasdd.train import train_arch

    spec = ArchSpec.make("convnet", depth=1, width=8, activation="relu", normalization="none", pooling="avgpool")
    recipe = budget_recipe(PROXY, 300, 1000)
    r = train_arch(spec, digits.x_train[:300], digits.y_train[:300], recipe, num_classes=10, device="cpu")
    assert r.sample_grads == training_grads(recipe, 300)


def test_fractions_parse_and_bad_ones_are_refused():
    assert parse_fraction("1/30") == pytest.approx(1 / 30) and parse_fraction("0.01") == 0.01
    for bad in ("0", "2", "x", "1/0"):
        with pytest.raises(NasddError, match="budget"):
            parse_fraction(bad)


def test_break_even_and_amortised_cost():
    assert amortised(100, 10_000, 100) == 200
    assert break_even(100, 10_000, 1100) == 11  # 11 candidates save 11,000 > 10,000
    assert break_even(2000, 10_000, 1000) == math.inf
