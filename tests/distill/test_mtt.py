import statistics

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from nasdd.arch import ArchSpec
from nasdd.augment import DSA
from nasdd.distill import METHODS, ProxySet, Saving, distill
from nasdd.distill.evaluate import evaluate_proxy, proxy_recipe
from nasdd.distill.mtt import FlatNet, make_plan, match_grad, match_loss, match_loss_unrolled
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe, build_seeded


@pytest.fixture(scope="module")
def buffer_root(tmp_path_factory):
    """One expert buffer shared by this module's distillations."""
    return str(tmp_path_factory.mktemp("buffers"))


def _mtt(bundle, root, ipc=1, seed=0, **kw):
    return distill(bundle, "mtt", ipc, seed, preset="quick", device="cpu", buffer_root=root, **kw)


def _problem(digits, soft: bool):
    torch.manual_seed(1)
    model = build_seeded(ArchSpec.make("convnet", depth=1, width=4), (1, 8, 8), 10, 0).double()
    net = FlatNet(model)
    w0 = parameters_to_vector(model.parameters()).detach()
    target = w0 + 0.05 * torch.randn_like(w0)
    x = digits.x_train[:20].double().clone().requires_grad_(True)
    y = digits.y_train[:20]
    if soft:
        y = torch.softmax(torch.randn(20, 10, dtype=torch.float64), 1).requires_grad_(True)
    plan = make_plan(20, 5, 8, DSA("color_crop_cutout_scale_rotate", per_sample=True), torch.device("cpu"))
    return net, w0, target, x, y, plan


@pytest.mark.parametrize("soft", [False, True])
def test_gradient_matches_unrolled_backprop_and_finite_differences(digits, soft):
    net, w0, target, x, y, plan = _problem(digits, soft)
    lr = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    loss, g_img, g_lr, g_lab = match_grad(net, w0, target, x, y, lr, plan)
    ref = match_loss_unrolled(net, w0, target, x, y, lr, plan)  # the paper's full-graph gradient
    wrt = [x, lr, y] if soft else [x, lr]
    ref_grads = torch.autograd.grad(ref, wrt)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(g_img, ref_grads[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_lr, ref_grads[1], rtol=1e-9, atol=1e-12)
    if soft:
        torch.testing.assert_close(g_lab, ref_grads[2], rtol=1e-9, atol=1e-12)
    eps, xd, yd = 1e-5, x.detach(), y.detach()
    for k in range(3):  # central differences along random directions
        v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        fd = (
            match_loss(net, w0, target, xd + eps * v, yd, 0.5, plan)
            - match_loss(net, w0, target, xd - eps * v, yd, 0.5, plan)
        ) / (2 * eps)  # noqa: E501
        assert float((g_img * v).sum()) == pytest.approx(fd, rel=1e-6)
    fd_lr = (
        match_loss(net, w0, target, xd, yd, 0.5 + eps, plan) - match_loss(net, w0, target, xd, yd, 0.5 - eps, plan)
    ) / (2 * eps)  # noqa: E501
    assert float(g_lr) == pytest.approx(fd_lr, rel=1e-6)


def test_valid_reproducible_proxy_with_learned_lr(digits, buffer_root, tmp_path):
    proxy = _mtt(digits, buffer_root, ipc=2, iterations=4, saving=Saving(out=tmp_path / "p"))
    assert proxy.images.shape == (20, *digits.x_train.shape[1:])
    assert torch.bincount(proxy.labels, minlength=10).tolist() == [2] * 10
    assert torch.isfinite(proxy.images).all()
    assert proxy.lr is not None and proxy.lr > 0 and proxy.lr != METHODS.get("mtt").options_type.lr_teacher
    assert proxy.provenance["cost"]["sample_grads"] == 4 * 3 * 10 * 20  # iterations x 3 x steps x batch
    assert proxy.provenance["experts"]["cost"]["sample_grads"] > 0  # expert cost is reported separately
    again = _mtt(digits, buffer_root, ipc=2, iterations=4)
    assert torch.equal(proxy.images, again.images) and proxy.lr == again.lr
    assert not torch.equal(_mtt(digits, buffer_root, ipc=2, iterations=4, seed=1).images, proxy.images)

    loaded = ProxySet.load(tmp_path / "p", digits)  # the learned step size survives the file round trip
    assert loaded.lr == proxy.lr
    assert proxy_recipe(loaded, TrainRecipe(epochs=3)).lr == proxy.lr  # and the trainer uses it


def test_expert_buffer_is_reused(digits, buffer_root):
    _mtt(digits, buffer_root, iterations=1)
    cls = METHODS.get("mtt")
    d = cls(ipc=1, device="cpu", buffer_root=buffer_root, **{**cls.presets["quick"], "iterations": 1})
    d.run(digits)
    assert d.buffer.trained_epochs == 0  # the second distillation trains no expert


def test_learned_soft_labels_and_zca(digits, buffer_root, tmp_path):
    kw = {"learn_labels": True, "zca": True, "lr_labels": 10.0}
    proxy = _mtt(digits, buffer_root, iterations=3, saving=Saving(out=tmp_path), **kw)
    assert proxy.soft and proxy.labels.shape == (10, 10)
    torch.testing.assert_close(proxy.labels.sum(1), torch.ones(10))
    assert (proxy.labels >= 0).all() and not torch.equal(proxy.labels, torch.eye(10))
    assert proxy.zca is not None
    loaded = ProxySet.load(tmp_path, digits)
    assert torch.equal(loaded.labels, proxy.labels) and torch.equal(loaded.zca, proxy.zca)
    x = digits.x_test[:4]
    assert not torch.allclose(loaded.input_transform(x), x)  # evaluation data is whitened too
    result = evaluate_proxy(loaded, digits, recipe=TrainRecipe(epochs=2), seeds=[0], device="cpu")[0]
    assert result.ok  # the trainer trains on the soft labels


def test_bad_options_are_refused(digits, buffer_root):
    with pytest.raises(NasddError, match="syn_steps"):
        _mtt(digits, buffer_root, syn_steps=0)
    with pytest.raises(NasddError, match="no option"):
        _mtt(digits, buffer_root, syn_step=3)


def test_beats_random_at_ipc1(digits, buffer_root):
    recipe = TrainRecipe(epochs=100)
    accs = {}
    for method in ("random", "mtt"):
        proxy = _mtt(digits, buffer_root) if method == "mtt" else distill(digits, "random", 1, 0)
        accs[method] = statistics.mean(
            r.accuracy for r in evaluate_proxy(proxy, digits, recipe=recipe, seeds=range(3), device="cpu")
        )
    assert accs["mtt"] > accs["random"], accs


def test_resume_continues_exactly(digits, buffer_root, tmp_path):
    kw = {"learn_labels": True, "lr_labels": 10.0}
    straight = _mtt(digits, buffer_root, iterations=4, **kw)
    _mtt(digits, buffer_root, iterations=2, saving=Saving(out=tmp_path, keep_checkpoint=True, checkpoint_every=2), **kw)
    saving = Saving(out=tmp_path, resume=True, overwrite=True, checkpoint_every=2)
    resumed = _mtt(digits, buffer_root, iterations=4, saving=saving, **kw)  # extends it
    assert torch.equal(straight.images, resumed.images) and torch.equal(straight.labels, resumed.labels)
    assert straight.lr == resumed.lr


@pytest.mark.parametrize("soft", [False, True])
def test_step_matches_the_unrolled_reference(digits, buffer_root, soft):
    """A distillation through `match_grad` ends where back-propagating through the unroll ends."""
    cls = METHODS.get("mtt")
    kw = {**cls.presets["quick"], "iterations": 3, "learn_labels": soft}
    proxies = []
    for reference in (True, False):
        d = cls(ipc=2, seed=4, device="cpu", buffer_root=buffer_root, reference=reference, **kw)
        proxies.append(d.run(digits))
    a, b = proxies
    assert torch.allclose(a.images, b.images, rtol=1e-4, atol=1e-4)
    assert a.lr == pytest.approx(b.lr, rel=1e-4)
    assert torch.allclose(a.labels.float(), b.labels.float(), atol=1e-5)
