"""The learning-curve cache of the equal-compute benchmark (nasdd.validate.curves) on digits."""

import pytest

from nasdd.spaces import draw_pool, load_space
from nasdd.train import TrainRecipe
from nasdd.validate.curves import Curves, NotRecorded

RECIPE = TrainRecipe(epochs=4, batch_size=128, lr=0.05, schedule="cosine")


@pytest.fixture(scope="module")
def members():
    return draw_pool(load_space("convnet_cpu_pooled"), 5, seed=0)


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


def test_a_replay_only_cache_refuses_an_unrecorded_epoch(digits, members, tmp_path):
    Curves(tmp_path / "curves", tmp_path / "ckpt", digits, RECIPE).val(members[0], 1)
    replay = Curves(tmp_path / "curves", tmp_path / "ckpt", digits, RECIPE, train=False)
    assert replay.val(members[0], 1) == replay.read(members[0])["val"][0]  # recorded: read back
    with pytest.raises(NotRecorded, match=f"{members[0].key()} epoch 2"):
        replay.val(members[0], 2)
    with pytest.raises(ValueError, match="outside 1..4"):
        replay.val(members[0], 5)
