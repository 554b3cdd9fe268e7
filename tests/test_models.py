import random

import pytest
import torch
from torch import nn
from torch.func import functional_call

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.models import DEFAULT_ARCH, Classifier, build, forward_flops, param_count, reinit_
from nasdd.spaces import load_space, space_names
from nasdd.train import build_seeded

SHAPES = [(c, hw) for c in (1, 3) for hw in (8, 28, 32)]


@pytest.mark.parametrize("space_name", space_names())
def test_every_sampled_member_builds_and_gives_finite_logits(space_name):
    space = load_space(space_name)
    rng = random.Random(0)
    members = [space.default_arch()] + [space.sample(rng) for _ in range(20)]
    for spec in members:
        for channels, hw in SHAPES:
            model = build(spec, channels, hw, 7)
            assert isinstance(model, Classifier)
            with torch.no_grad():
                logits = model(torch.randn(2, channels, hw, hw))
            assert logits.shape == (2, 7), (spec, channels, hw)
            assert torch.isfinite(logits).all(), (spec, channels, hw)
            assert model.features(torch.randn(2, channels, hw, hw)).shape == (2, model.feature_dim)


def test_reinit_is_in_place_and_fresh():
    net = build_seeded(DEFAULT_ARCH, (1, 8, 8), 10, 0)
    before = [p.detach().clone() for p in net.parameters()]
    ids = [id(p) for p in net.parameters()]
    torch.manual_seed(1)  # build_seeded used seed 0
    reinit_(net)
    assert ids == [id(p) for p in net.parameters()]
    assert not torch.equal(before[0], next(net.parameters()))


@pytest.mark.parametrize("hw", [9, 10, 15, 30, 64])
def test_odd_and_large_sizes(hw):
    for spec in (DEFAULT_ARCH.__class__.make("convnet", depth=4, width=8), load_space("cell201").default_arch()):
        assert build(spec, 3, hw, 5)(torch.randn(2, 3, hw, hw)).shape == (2, 5)


def test_convnet_structure():
    model = build(DEFAULT_ARCH, 1, 28, 10)
    assert len(model.blocks) == 3 and model.feature_dim == 128 * 3 * 3
    norm = model.blocks[0][1]
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels == 128 and norm.affine
    assert isinstance(model.blocks[0][3], nn.AvgPool2d)
    outs = model.layer_outputs(torch.randn(2, 1, 28, 28))
    assert [tuple(o.shape[1:]) for o in outs] == [(128, 14, 14), (128, 7, 7), (128, 3, 3)]
    per_layer = build(ArchSpec.make("convnet", depth=2, width_1=4, width_2=6, pooling="none"), 1, 8, 3)
    assert per_layer.feature_dim == 6 * 8 * 8


def test_convnet_norms_and_activations():
    for norm, cls in [("batchnorm", nn.BatchNorm2d), ("layernorm", nn.LayerNorm), ("groupnorm", nn.GroupNorm)]:
        assert isinstance(build(ArchSpec.make("convnet", normalization=norm, width=8), 1, 8, 2).blocks[0][1], cls)
    assert isinstance(build(ArchSpec.make("convnet", normalization="none"), 1, 8, 2).blocks[0][1], nn.Identity)
    assert isinstance(build(ArchSpec.make("convnet", activation="sigmoid", width=8), 1, 8, 2).blocks[0][2], nn.Sigmoid)


def test_functional_call_matches_forward_and_differentiates():
    for spec in (DEFAULT_ARCH, load_space("cell201").default_arch()):
        model = build(spec, 1, 8, 10).eval()
        x = torch.randn(4, 1, 8, 8)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
        out = functional_call(model, {**params, **dict(model.named_buffers())}, (x,))
        assert torch.allclose(out, model(x), atol=1e-5)
        grads = torch.autograd.grad(out.square().sum(), list(params.values()))
        assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_forward_flops_counts_convs_and_linear():
    spec = ArchSpec.make("convnet", depth=1, width=8, normalization="none", pooling="none")
    model = build(spec, 1, 8, 10)
    conv = 2 * (8 * 1 * 3 * 3) * (8 * 8)  # multiply-adds x 2, per output pixel
    linear = 2 * (8 * 8 * 8) * 10
    assert forward_flops(model, (1, 8, 8)) == conv + linear
    assert model.training  # the counter restores training mode
    assert param_count(model) == (8 * 9 + 8) + (512 * 10 + 10)
    big = forward_flops(build(DEFAULT_ARCH, 1, 28, 10), (1, 28, 28))
    assert big > 50 * (conv + linear)


def test_cell_none_edges_give_zero_but_finite_output():
    edges = {e: "none" for e in ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")}
    model = build(ArchSpec.make("cell201", channels=4, cells_per_stage=1, **edges), 1, 8, 3)
    assert torch.isfinite(model(torch.randn(2, 1, 8, 8))).all()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ArchSpec.make("convnet", depth=3, kernel=5), "convnet has no parameter 'kernel'; valid parameters: depth"),
        (ArchSpec.make("convnet", activation="tanh"), "activation='tanh' is invalid; expected one of sigmoid"),
        (ArchSpec.make("convnet", depth=9), "depth=9 is invalid; expected at most 8"),
        (ArchSpec.make("convnet", width=0), "width=0 is invalid; expected a positive integer"),
        (ArchSpec.make("cell201", edge_1_0="conv"), "edge_1_0='conv' is invalid"),
        (ArchSpec.make("resnet", depth=18), "unknown model family 'resnet'; valid model families: cell201, convnet"),
    ],
)
def test_invalid_specs_raise(spec, message):
    with pytest.raises(NasddError, match=message.replace("(", r"\(")):
        build(spec, 1, 8, 10)
