import pytest
import torch

from nasdd.distill import distill
from nasdd.distill.coresets import Herding, KCenter

from .helpers import check_proxy, mean_accuracy, random_accuracy


def test_herding_greedy_mean_matching():
    f = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # mean 3.25
    # k=1: |3.25 - x| smallest at 2; k=2: (2 + x)/2 nearest 3.25 -> x = 4.5 -> 1 (1.5) vs 10 (6): dist 1.75 vs 2.75
    assert Herding(ipc=3).pick(f).tolist() == [2, 1, 3]


def test_kcenter_greedy_farthest_point():
    f = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])  # mean 4.8 -> start at 2
    assert KCenter(ipc=3).pick(f).tolist() == [2, 4, 0]


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_coreset_selects_real_images(digits, method):
    proxy = distill(digits, method, 3, seed=1, preset="quick")
    check_proxy(proxy, digits, 3)
    # every image is a training image of its class, none twice
    match = (proxy.images.flatten(1)[:, None] == digits.x_train.flatten(1)[None]).all(-1)
    rows = match.float().argmax(1)
    assert match.any(1).all() and len(set(rows.tolist())) == len(rows)
    assert torch.equal(digits.y_train[rows], proxy.labels)
    again = distill(digits, method, 3, seed=1, preset="quick")
    assert torch.equal(proxy.images, again.images)


def test_feature_coresets_count_cost_and_beat_random(digits):
    base = random_accuracy(digits)
    costs = []
    for method in ("herding", "kcenter"):  # kcenter reuses herding's cached features and their cost
        proxy = distill(digits, method, 1, seed=0, preset="quick")
        costs.append(proxy.provenance["cost"])
        assert proxy.provenance["cost"]["sample_grads"] > len(digits.x_train)
        assert mean_accuracy(proxy, digits) > base, method
    assert costs[0]["sample_grads"] == costs[1]["sample_grads"] and costs[1]["seconds"] > costs[0]["seconds"] / 2
