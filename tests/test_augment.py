import pytest
import torch

from nasdd.augment import DEFAULT_STRATEGY, DSA, OPS, make_augment
from nasdd.errors import NasddError


def _batch(n: int = 6, c: int = 3, hw: int = 16) -> torch.Tensor:
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("strategy", [*OPS, DEFAULT_STRATEGY])
@pytest.mark.parametrize("mode", ["single", "all"])
def test_same_seed_same_transform_for_batches_of_any_size(strategy, mode):
    """Siamese: with one draw per batch, a batch of 2 gets exactly the transform its superset of 6 gets."""
    dsa, x = DSA(strategy, mode=mode), _batch()
    for seed in range(5):
        full = dsa(x, seed)
        assert torch.allclose(dsa(x[:2], seed), full[:2], atol=1e-6)
        assert torch.equal(dsa(x, seed), full)


@pytest.mark.parametrize("op", OPS)
def test_each_op_changes_the_input(op):
    dsa, x = DSA(op), _batch()
    changed = [not torch.allclose(dsa(x, s), x, atol=1e-4) for s in range(20)]
    # flip fires with probability 1/2 and crop may draw a zero shift; the others always change the image
    assert sum(changed) >= (5 if op in ("flip", "crop") else 20), changed


@pytest.mark.parametrize("op", OPS)
def test_each_op_is_differentiable(op):
    dsa = DSA(op, mode="all")
    x = _batch().requires_grad_(True)
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    (dsa(x, 0) * weight).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the gradient is the true one (finite differences, in double precision)
    small = _batch(2, 2, 6).double().requires_grad_(True)
    for seed in range(3):
        assert torch.autograd.gradcheck(lambda t, s=seed: dsa(t, s), (small,), atol=1e-5)


def test_different_seeds_differ_and_per_sample_draws_per_image():
    x = _batch(1).expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    shared = DSA("scale_rotate", mode="all")(x, 0)
    assert torch.allclose(shared, shared[:1].expand_as(shared))
    per_sample = DSA("scale_rotate", mode="all", per_sample=True)(x, 0)
    assert not torch.allclose(per_sample[0], per_sample[1])
    assert not torch.allclose(DSA("scale")(x, 0), DSA("scale")(x, 1))


def test_crop_is_an_integer_shift_with_zero_fill():
    x = _batch(1, 1, 28)
    for seed in range(10):
        out = DSA("crop")(x, seed)
        matches = []
        for dy in range(-4, 5):  # 1/8 of 28 rounds to 4 pixels
            for dx in range(-4, 5):
                shifted = torch.zeros_like(x)
                ys, yd = (slice(0, 28 - dy), slice(dy, 28)) if dy >= 0 else (slice(-dy, 28), slice(0, 28 + dy))
                xs, xd = (slice(0, 28 - dx), slice(dx, 28)) if dx >= 0 else (slice(-dx, 28), slice(0, 28 + dx))
                shifted[..., yd, xd] = x[..., ys, xs]
                matches.append(torch.allclose(out, shifted, atol=1e-4))
        assert sum(matches) == 1, seed


@pytest.mark.parametrize(("hw", "side"), [(32, 16), (28, 14), (8, 4), (9, 5)])
def test_cutout_removes_a_square_of_half_the_side(hw, side):
    x = torch.ones(1, 1, hw, hw)
    zeros = [int((DSA("cutout")(x, s) == 0).sum()) for s in range(40)]
    assert max(zeros) == side * side and min(zeros) > 0


def test_make_augment():
    assert make_augment(None) is None and make_augment("none") is None and make_augment("") is None
    dsa = make_augment("dsa")
    assert dsa.ops == list(OPS) and dsa.per_sample and dsa.mode == "single"
    assert make_augment("dsa:crop_flip").ops == ["crop", "flip"]
    assert repr(make_augment("dsa:crop")) == "DSA('crop', mode='single', per_sample=True)"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_augment("autoaugment"), "unknown augmentation 'autoaugment'; valid: none, dsa"),
        (lambda: make_augment("dsa:crop_blur"), r"unknown augmentation \['blur'\]; valid operations: color"),
        (lambda: DSA(""), "unknown augmentation ''"),
        (lambda: DSA("crop", mode="some"), "unknown augmentation mode 'some'"),
    ],
)
def test_bad_names(call, message):
    with pytest.raises(NasddError, match=message):
        call()
