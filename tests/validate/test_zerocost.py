import math

import pytest

from nasdd.arch import ArchSpec
from nasdd.models import CELL_EDGES
from nasdd.spaces import load_space
from nasdd.validate.pool import draw_pool
from nasdd.validate.zerocost import SCORES, catalog, zero_cost


def _members(name):
    space = load_space(name)
    pool = draw_pool(space, 8, seed=0) + [space.default_arch()]
    if name == "cell201":  # a cell whose every edge is 'none' (output identically zero)
        pool.append(ArchSpec.make("cell201", **dict.fromkeys(CELL_EDGES, "none"), channels=8, cells_per_stage=1))
    else:  # sigmoid without normalisation, and the deepest member with instance norm on a 1x1 map
        depth = max(load_space(name).params[0].options())
        pool.append(ArchSpec.make("convnet", depth=depth, width=8, activation="sigmoid", normalization="none"))
        pool.append(ArchSpec.make("convnet", depth=depth, width=8, normalization="instancenorm", pooling="avgpool"))
    return pool


@pytest.mark.parametrize("space", ["convnet_dc", "convnet_cpu", "cell201"])
def test_every_score_runs_on_every_member(space, digits):
    for arch in _members(space):
        for name in SCORES.names():
            r = zero_cost(name, arch, digits, batch_size=16, device="cpu")
            assert math.isfinite(r.score), (name, arch)
            assert r.seconds >= 0 and r.sample_grads >= 0


def test_scores_are_seeded_and_sensible(digits):
    a = ArchSpec.make("convnet", depth=2, width=16)
    big = ArchSpec.make("convnet", depth=2, width=32)
    for name in SCORES.names():
        assert zero_cost(name, a, digits, seed=1).score == zero_cost(name, a, digits, seed=1).score
    assert zero_cost("params", big, digits).score > zero_cost("params", a, digits).score
    assert zero_cost("grad_norm", a, digits, batch_size=16).sample_grads == 16
    assert zero_cost("naswot", a, digits).sample_grads == 0
    assert {n for n, _ in catalog()} == {"synflow", "naswot", "grad_norm", "snip", "params", "flops"}


def test_naswot_prefers_distinct_codes(digits):
    """An all-'none' cell maps every input to the same code: the lowest NASWOT score."""
    dead = ArchSpec.make("cell201", **dict.fromkeys(CELL_EDGES, "none"), channels=8, cells_per_stage=1)
    alive = load_space("cell201").default_arch()
    assert zero_cost("naswot", dead, digits).score < zero_cost("naswot", alive, digits).score
