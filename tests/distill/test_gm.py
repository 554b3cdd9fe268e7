import pytest
import torch

from nasdd.arch import ArchSpec
from nasdd.augment import DSA
from nasdd.distill import METHODS, Saving, distill
from nasdd.distill.evaluate import evaluate_proxy
from nasdd.distill.gm import GradientMatching, layer_distance, paper_loops, siamese_augment
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe

METHODS_GM = ["dc", "dsa"]
SMALL = ArchSpec.make("convnet", depth=2, width=8)


@pytest.mark.parametrize("method", METHODS_GM)
def test_proxy_shape_and_determinism(digits, method):
    a = distill(digits, method, 2, seed=3, preset="quick", iterations=2)
    b = distill(digits, method, 2, seed=3, preset="quick", iterations=2)
    assert a.images.shape == (20, 1, 8, 8)
    assert torch.bincount(a.labels, minlength=10).tolist() == [2] * 10
    assert torch.isfinite(a.images).all()
    assert torch.equal(a.images, b.images)
    assert a.provenance["cost"]["sample_grads"] > 0
    assert METHODS.get(method).family == "parameter matching"


@pytest.mark.parametrize("method", METHODS_GM)
def test_beats_random_at_ipc1(digits, method):
    recipe = TrainRecipe(epochs=100)
    proxy = distill(digits, method, 1, seed=0, preset="quick")
    rand = distill(digits, "random", 1, seed=0)
    acc = [r.accuracy for r in evaluate_proxy(proxy, digits, recipe=recipe, seeds=range(3))]
    base = [r.accuracy for r in evaluate_proxy(rand, digits, recipe=recipe, seeds=range(3))]
    assert sum(acc) / 3 > sum(base) / 3


def test_layer_distance_hand_computed():
    # conv gradient [K=1, out=2, in=1, 1, 2]: rows (1,0)/(0,1) are orthogonal -> 1, (1,1)/(2,2) parallel -> 0
    conv_r = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(1, 2, 1, 1, 2)
    conv_s = torch.tensor([[0.0, 1.0], [2.0, 2.0]]).view(1, 2, 1, 1, 2)
    assert layer_distance(conv_r, conv_s).item() == pytest.approx(1.0, abs=1e-5)
    # linear gradient [K=1, out=2, in=2]: (3,4)/(4,3) -> 1 - 24/25, (1,0)/(-1,0) -> 2
    lin_r = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    lin_s = torch.tensor([[[4.0, 3.0], [-1.0, 0.0]]])
    assert layer_distance(lin_r, lin_s).item() == pytest.approx(2.04, abs=1e-5)
    # classes add up; biases / norm scales ([K, C]) are ignored as in the DC code
    both = layer_distance(torch.cat([lin_r, lin_s]), torch.cat([lin_s, lin_s]))  # class 1 matches exactly
    assert both.item() == pytest.approx(2.04 + 0.0, abs=1e-5)
    assert layer_distance(torch.ones(2, 5), -torch.ones(2, 5)).item() == 0.0


def test_siamese_augment_identical_transform(digits):
    dsa = DSA()  # all six operations, one draw per class batch
    real = digits.x_train[:60].view(3, 20, 1, 8, 8)
    syn = real[:, :4].clone()
    changed = 0
    for s in range(12):
        seeds = [s, s + 100, s + 200]
        r, y = siamese_augment(dsa, real, syn, seeds)
        assert r.shape == real.shape and y.shape == syn.shape
        assert torch.allclose(y, r[:, :4], atol=1e-6)  # same images + same seed -> same output
        changed += int(not torch.allclose(r, real))
    assert changed >= 6  # the transform is not the identity


def test_paper_loops():
    assert paper_loops(1) == (1, 1)
    assert paper_loops(10) == (10, 50)
    assert paper_loops(50) == (50, 10)
    assert paper_loops(12) == (10, 50)


def test_inner_training_between_matching_steps(digits):
    d = GradientMatching(ipc=2, seed=0, iterations=1, outer_loop=3, inner_loop=2, batch_real=8, arch=SMALL)
    proxy = d.run(digits)
    assert torch.isfinite(proxy.images).all()
    # 3 matching passes (8 real + 2x2 synthetic per class) and 2 trainings of 2 epochs on the 20 images
    assert d.sample_grads == 3 * 10 * (8 + 2 * 2) + 2 * 2 * 20


def test_batchnorm_statistics_frozen_from_real_data(digits):
    arch = ArchSpec.make("convnet", depth=2, width=8, normalization="batchnorm")  # BN: the stats are frozen
    d = GradientMatching(ipc=1, seed=0, iterations=1, arch=arch, bn_per_class=4)
    proxy = d.run(digits)
    assert torch.isfinite(proxy.images).all()
    torch.manual_seed(5)
    x = d.real_batch(4).flatten(0, 1)
    torch.manual_seed(5)
    d._freeze_bn()
    bn = d.bns[0]
    assert not bn.training
    with torch.no_grad():
        h = d.net.blocks[0][0](x)
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var(dim=(0, 2, 3)), rtol=1e-3)


def test_resume_is_exact(digits, tmp_path):
    full = distill(digits, "dsa", 2, seed=1, preset="quick", iterations=4)
    distill(digits, "dsa", 2, seed=1, preset="quick", iterations=2, saving=Saving(out=tmp_path, keep_checkpoint=True))
    saving = Saving(out=tmp_path, resume=True, overwrite=True)
    resumed = distill(digits, "dsa", 2, seed=1, preset="quick", iterations=4, saving=saving)
    assert torch.allclose(full.images, resumed.images, atol=1e-6)


def test_bad_options_are_refused(digits):
    with pytest.raises(NasddError, match="valid options"):
        distill(digits, "dc", 1, lr_net_typo=1.0)
    with pytest.raises(NasddError, match="batch_real"):
        distill(digits, "dc", 1, batch_real=0)
    with pytest.raises(NasddError, match="unknown augmentation"):
        distill(digits, "dsa", 1, dsa_strategy="color_blur", iterations=1)


def test_real_gradients_are_constants(digits):
    d = METHODS.get("dsa")(ipc=1, iterations=0, batch_real=4, arch=SMALL)
    d.run(digits)
    real = d.real_batch(4).requires_grad_(True)  # e.g. augmented together with the synthetic images
    grads = d.class_grads_autograd(real, create_graph=False)
    assert not any(g.requires_grad for g in grads.values())
    assert all(g.requires_grad for g in d.class_grads_autograd(real, create_graph=True).values())
    assert d.match_loss().requires_grad


BN = ArchSpec.make("convnet", depth=2, width=8, normalization="batchnorm")


@pytest.mark.parametrize("method,arch", [("dc", SMALL), ("dsa", SMALL), ("dc", BN)])
def test_autograd_path_matches_reference(digits, monkeypatch, method, arch):
    """The autograd matching path (in chunks) gives the previous torch.func path's loss and image gradient,
    and the same proxy after a few iterations (float noise only)."""
    monkeypatch.setattr("nasdd.distill.chunks.CPU_CHUNK", 4)  # real batches of 20 and ipc 5 both get split
    cls = METHODS.get(method)
    runs = []
    for reference in (True, False):
        d = cls(ipc=5, seed=1, iterations=2, outer_loop=2, inner_loop=1, batch_real=20, arch=arch, reference=reference)
        proxy = d.run(digits)
        torch.manual_seed(5)
        d._freeze_bn()
        loss = d.match_loss()
        (g,) = torch.autograd.grad(loss, d.images)
        runs.append((proxy.images, loss.detach(), g, d.sample_grads))
    (pa, la, ga, ca), (pb, lb, gb, cb) = runs
    assert torch.allclose(pa, pb, atol=1e-5)
    assert torch.allclose(la, lb, rtol=1e-5)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)
    assert ca == cb


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS_GM)
def test_compiled_real_pass_matches_eager(digits, monkeypatch, method):
    """`compile_model=True` (compiled real-gradient pass and inner training) gives the eager path's real
    gradients and, after a few iterations, its proxy, up to float noise."""
    monkeypatch.setattr("nasdd.distill.chunks.CPU_CHUNK", 4)  # full chunks compiled, the remainder eager
    cls = METHODS.get(method)
    runs = []
    for compile_model in (False, True):
        kw = {"outer_loop": 2, "inner_loop": 1, "batch_real": 10, "arch": SMALL, "compile_model": compile_model}
        d = cls(ipc=2, seed=1, iterations=2, **kw)
        proxy = d.run(digits)
        torch.manual_seed(5)
        grads = d.class_grads_autograd(d.real_batch(10), create_graph=False)
        runs.append((proxy.images, grads, d.sample_grads, len(d.compiled_)))
    (pa, ga, ca, na), (pb, gb, cb, nb) = runs
    assert (na, nb) == (0, 1)  # one compiled network, only where asked
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-4, atol=1e-5 * ga[k].abs().max().item())
    assert torch.allclose(pa, pb, atol=1e-4)
    assert ca == cb
