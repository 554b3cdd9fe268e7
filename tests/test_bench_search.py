"""The equal-compute search benchmark's pieces (scripts/_curves.py, scripts/_equal_compute.py) on digits."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import _equal_compute as ec  # noqa: E402
from _curves import Curves  # noqa: E402

from nasdd.spaces import draw_pool, load_space  # noqa: E402
from nasdd.train import TrainRecipe  # noqa: E402

RECIPE = TrainRecipe(epochs=4, batch_size=128, lr=0.05, schedule="cosine")


@pytest.fixture(scope="module")
def space():
    return load_space("convnet_cpu_pooled")


@pytest.fixture(scope="module")
def members(space):
    return draw_pool(space, 5, seed=0)


def test_a_curve_extended_in_steps_equals_one_training(digits, members, tmp_path):
    spec = members[0]
    steps = Curves(tmp_path / "a", tmp_path / "a_ckpt", digits, RECIPE)
    first = steps.val(spec, 1)
    assert len(steps.read(spec)["val"]) == 1
    later = [steps.val(spec, e) for e in (3, 4)]
    straight = Curves(tmp_path / "b", tmp_path / "b_ckpt", digits, RECIPE)
    assert straight.val(spec, 4) == pytest.approx(later[1], abs=1e-9)
    assert straight.read(spec)["val"] == pytest.approx([first, steps.val(spec, 2), *later], abs=1e-9)
    assert 0 <= steps.test(spec) <= 1
    # without its checkpoint a curve is retrained from the start, to the same numbers
    lost = Curves(tmp_path / "c", tmp_path / "c_ckpt", digits, RECIPE)
    lost.val(spec, 2)
    (tmp_path / "c_ckpt" / f"{spec.key()}.pt").unlink()
    assert lost.val(spec, 3) == pytest.approx(later[0], abs=1e-9)


def test_searches_stay_within_the_budget_and_score_regret(digits, space, members, tmp_path):
    keys = [m.key() for m in members]
    truth = pd.Series([0.90, 0.95, 0.80, 0.85, 0.70], index=keys)
    scores = pd.DataFrame({"proxy": [0.5, 0.9, 0.1, 0.8, 0.2], "snip": [1.0, 2.0, 3.0, 4.0, 5.0]}, index=keys)
    curves = Curves(tmp_path / "curves", tmp_path / "ckpt", digits, RECIPE)
    n = len(digits.y_train)
    costs = {
        "proxy-tpe": {"column": "proxy", "per_candidate": n // 10, "distill": n},
        "subset-tpe": {"column": "proxy", "per_candidate": n // 10, "distill": 0},
        "zerocost-topk": {"column": "snip", "per_candidate": 64, "distill": 0},
        "prescreen": {"column": "snip", "per_candidate": 64, "distill": 0},
    }
    ctx = ec.Ctx(space, members, curves, truth, scores, RECIPE.epochs, n, costs)
    for strategy in ec.STRATEGIES:
        for budget in (0.5, 2.5):
            row = ec.run(ctx, strategy, budget, seed=0)
            assert row["spent_grads"] <= row["budget_grads"], (strategy, budget)
            if row["winner_key"]:
                assert row["regret"] == pytest.approx(0.95 - truth[row["winner_key"]], abs=1e-4)
    # 1.5 truth trainings: the proxy search pays distillation (1 epoch of 4), retrains
    # floor(0.9 * 1.25) = 1 candidate in full and scores members with the rest: its winner is the proxy's best
    row = ec.run(ctx, "proxy-tpe", 1.5, seed=0)
    assert row["full_trainings"] == 1 and row["winner_key"] == keys[1] and row["regret"] == 0
    # the zero-cost prescreen's top 2 (snip 5.0 and 4.0) are trained; the one with the better val wins
    row = ec.run(ctx, "zerocost-topk", 2.5, seed=0)
    assert row["full_trainings"] == 2 and row["winner_key"] in (keys[4], keys[3])
    # Hyperband with half a truth training (2 epochs) never trains anyone to the end
    row = ec.run(ctx, "hyperband", 0.5, seed=0)
    assert row["full_trainings"] == 0 and row["spent_grads"] == 2 * n


def test_a_suggestion_maps_onto_the_nearest_member(space, members):
    nearest = ec.projector(space, members)
    for m in members:
        assert nearest(m) == m
