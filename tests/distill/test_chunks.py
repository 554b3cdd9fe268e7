import torch
from torch import nn

from nasdd.arch import ArchSpec
from nasdd.distill.chunks import CPU_CHUNK, chunk_size, chunked
from nasdd.models import build


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
