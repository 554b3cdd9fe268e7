import pytest
import torch

from nasdd.arch import ArchSpec
from nasdd.distill import distill
from nasdd.distill.dm import DistributionMatching, RealSampler, class_means
from nasdd.models import reinit_

from .helpers import check_proxy, mean_accuracy, random_accuracy


def test_class_means_match_a_loop():
    f, y = torch.randn(20, 5), torch.tensor([0, 1, 2, 1] * 5)
    means = class_means(f, y, 4)
    for c in range(3):
        assert torch.allclose(means[c], f[y == c].mean(0), atol=1e-6)
    assert means[3].abs().sum() == 0  # an empty class gives zeros, not NaN


def test_real_sampler_draws_class_major_without_repeats(digits):
    x, y = RealSampler(digits, 7, torch.device("cpu"))()
    assert y.tolist() == [c for c in range(10) for _ in range(7)]
    assert len(torch.unique(x.flatten(1), dim=0)) == 70


def test_dm_proxy_shape_determinism_and_beats_random(digits):
    proxy = distill(digits, "dm", 1, seed=0, preset="quick")
    check_proxy(proxy, digits, 1)
    again = distill(digits, "dm", 1, seed=0, preset="quick")
    assert torch.equal(proxy.images, again.images)
    cost = DistributionMatching.presets["quick"]
    assert proxy.provenance["cost"]["sample_grads"] == cost["iterations"] * (10 * cost["batch_real"] + 10)
    assert mean_accuracy(proxy, digits) > random_accuracy(digits)


def test_dm_reduces_the_matching_loss(digits):
    d = DistributionMatching(ipc=2, seed=0, iterations=0, device="cpu", batch_real=32)
    d.run(digits)

    def loss() -> float:  # same network and real batch for both measurements
        torch.manual_seed(123)
        reinit_(d.net)
        xr, yr = d.sampler()
        with torch.no_grad():
            return float(
                (
                    (class_means(d.net.features(xr), yr, 10) - class_means(d.net.features(d.images), d.labels, 10)) ** 2
                ).sum()
            )

    first = loss()
    for it in range(30):
        torch.manual_seed(it)
        d.step(it)
    assert loss() < first


def test_fused_step_matches_the_original_per_class_loop(digits, monkeypatch):
    """The fused, chunked DM step gives the original DM code's per-class loop's proxy (float noise only)."""
    monkeypatch.setattr("nasdd.distill.chunks.CPU_CHUNK", 8)  # the real batch (16 per class) gets split
    arch = ArchSpec.make("convnet", depth=2, width=8)
    proxies, costs = [], []
    for reference, iterations in ((True, 5), (False, 5), (False, 0)):
        d = DistributionMatching(ipc=3, seed=2, iterations=iterations, batch_real=16, arch=arch, reference=reference)
        proxies.append(d.run(digits).images)
        costs.append(d.sample_grads)
    assert not torch.allclose(proxies[0], proxies[2], atol=1e-3)  # the images moved
    assert torch.allclose(proxies[0], proxies[1], atol=1e-5)
    assert costs[0] == costs[1]


@pytest.mark.slow
def test_compiled_real_pass_matches_eager(digits, monkeypatch):
    """`compile_model=True` (the real images' pass compiled) gives the eager step's proxy up to float noise."""
    monkeypatch.setattr("nasdd.distill.chunks.CPU_CHUNK", 8)
    arch = ArchSpec.make("convnet", depth=2, width=8)
    runs = []
    for compile_model in (False, True):
        kw = {"batch_real": 12, "arch": arch, "compile_model": compile_model}  # 120 real images = 15 chunks
        d = DistributionMatching(ipc=3, seed=2, iterations=5, **kw)
        runs.append((d.run(digits).images, len(d.compiled_)))
    assert [n for _, n in runs] == [0, 1]
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-5)
