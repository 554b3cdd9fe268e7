import pytest
import torch
from torch import nn

from nasdd.arch import ArchSpec
from nasdd.distill.chunks import CPU_CHUNK, OneShape, chunk_size, chunked, with_compiled
from nasdd.models import build
from nasdd.trainfast import COMPILE_FAILED, model_key


def test_chunked_equals_one_batch():
    torch.manual_seed(0)
    net = build(ArchSpec.make("convnet", depth=2, width=8), 1, 8, 10)
    x = torch.randn(3 * CPU_CHUNK + 5, 1, 8, 8)
    assert chunk_size(net, x) == CPU_CHUNK
    assert torch.allclose(chunked(net.features, net, x), net.features(x), atol=1e-5)


def test_batchnorm_in_training_mode_is_not_split():
    net = build(ArchSpec.make("convnet", depth=2, width=8, normalization="batchnorm"), 1, 8, 10)
    x = torch.randn(3 * CPU_CHUNK, 1, 8, 8)
    assert chunk_size(net.train(), x) == len(x)  # batch statistics would change
    assert chunk_size(net.eval(), x) == CPU_CHUNK
    assert chunk_size(nn.Identity(), x[:0]) == CPU_CHUNK


def test_with_compiled_runs_eager_unless_asked_and_after_a_failure(monkeypatch):
    net = build(ArchSpec.make("convnet", depth=2, width=8), 1, 8, 10)
    x = torch.randn(2 * CPU_CHUNK + 3, 1, 8, 8)
    cache: dict = {}
    seen = []
    assert with_compiled(lambda f: seen.append(f) or 1, net.features, net, cache, False) == 1
    assert seen == [net.features] and cache == {}  # not asked: eager, nothing compiled

    class Broken(OneShape):
        def __call__(self, x):
            raise RuntimeError("no compiler")

    monkeypatch.setattr("nasdd.distill.chunks.OneShape", Broken)
    with pytest.warns(UserWarning, match="no compiler"):
        out = with_compiled(lambda f: chunked(f, net, x), net.features, net, cache, True)
    assert torch.allclose(out, net.features(x), atol=1e-5)  # the eager rerun
    assert model_key(net, ()) in COMPILE_FAILED
    COMPILE_FAILED.discard(model_key(net, ()))


@pytest.mark.slow
def test_one_shape_compiles_the_first_shape_only():
    net = build(ArchSpec.make("convnet", depth=2, width=8), 1, 8, 10)
    f = OneShape(net.features)
    x = torch.randn(CPU_CHUNK + 3, 1, 8, 8)
    with torch.no_grad():
        out = chunked(f, net, x)  # chunks of CPU_CHUNK compiled, the remainder of 3 eager
        assert torch.allclose(out, net.features(x), atol=1e-5)
    assert f.shape == (CPU_CHUNK, 1, 8, 8)
