import pytest
import torch

from nasdd.arch import ArchSpec
from nasdd.distill import distill
from nasdd.distill.cafe import CAFE
from nasdd.errors import NasddError

from .helpers import check_proxy, mean_accuracy, random_accuracy


def test_cafe_proxy_shape_determinism_and_beats_random(digits):
    proxy = distill(digits, "cafe", 1, seed=0, preset="quick")
    check_proxy(proxy, digits, 1)
    assert proxy.provenance["cost"]["sample_grads"] > 0
    again = distill(digits, "cafe", 1, seed=0, preset="quick")
    assert torch.equal(proxy.images, again.images)
    assert mean_accuracy(proxy, digits) > random_accuracy(digits)


def test_cafe_inner_loop_trains_the_network_on_the_synthetic_set(digits):
    c = CAFE(ipc=2, seed=0, iterations=0, device="cpu", batch_real=16, query_per_class=16, max_inner=30)
    c.run(digits)
    torch.manual_seed(0)
    first = c.query_accuracy()
    c.inner_loop(first)
    assert c.query_accuracy() > first + 0.03 or c.sample_grads > 30 * 20


def test_cafe_image_update_changes_images_and_is_finite(digits):
    c = CAFE(ipc=1, seed=0, iterations=0, device="cpu", batch_real=16, dsa_strategy="crop_scale")
    c.run(digits)
    before = c.images.detach().clone()
    assert torch.isfinite(torch.tensor(c.image_update()))
    assert not torch.equal(before, c.images.detach())


def test_cafe_layer_weights_must_match_depth(digits):
    with pytest.raises(NasddError, match="layer_weights needs 3"):
        distill(digits, "cafe", 1, iterations=1, layer_weights=[1.0, 0.5])


def test_chunked_passes_match_one_batch(digits, monkeypatch):
    """CAFE with its passes in chunks ends where the one-batch passes end (float noise only)."""
    monkeypatch.setattr("nasdd.distill.chunks.CPU_CHUNK", 8)
    arch = ArchSpec.make("convnet", depth=2, width=8)
    proxies = []
    for reference, iterations in ((True, 2), (False, 2), (False, 0)):
        d = CAFE(ipc=2, seed=3, arch=arch, reference=reference, **{**CAFE.presets["quick"], "iterations": iterations})
        proxies.append(d.run(digits).images)
    assert not torch.allclose(proxies[0], proxies[2], atol=1e-4)  # the images moved
    assert torch.allclose(proxies[0], proxies[1], atol=1e-5)
