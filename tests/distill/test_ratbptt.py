import weakref

import pytest
import torch

from nasdd.arch import ArchSpec
from nasdd.distill import METHODS, Saving, catalog, distill
from nasdd.distill.mtt import FlatNet, make_plan
from nasdd.distill.ratbptt import InnerOptimizer, RaTBPTT, window_grad, window_loss_unrolled
from nasdd.errors import NasddError
from nasdd.models import build

from .helpers import check_proxy

CPU = torch.device("cpu")
TINY = ArchSpec.make("convnet", depth=1, width=4, normalization="instancenorm")
OPTS = {"sgd": InnerOptimizer("sgd", 0.05, weight_decay=5e-4), "adam": InnerOptimizer("adam", 0.01)}


def _problem(n_syn: int = 6):
    """A tiny float64 network, synthetic set with soft labels and real batch."""
    module = build(TINY, 1, 8, 3).double()
    w0 = torch.cat([p.detach().flatten() for p in module.parameters()])
    images = torch.randn(n_syn, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.softmax(torch.randn(n_syn, 3, dtype=torch.float64), 1).requires_grad_(True)
    real = torch.randn(20, 1, 8, 8, dtype=torch.float64), torch.randint(3, (20,))
    return FlatNet(module), w0, images, targets, real


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_window_gradient_equals_backprop_through_the_window(kind):
    net, w0, images, targets, real = _problem()
    plan = make_plan(len(images), 9, 4, None, CPU)  # 5 steps before the window, 4 in it
    loss, g_img, g_lab = window_grad(net, OPTS[kind], w0, images, targets, plan, 5, real)
    ref = window_loss_unrolled(net, OPTS[kind], w0, images, targets, plan, 5, real)
    r_img, r_lab = torch.autograd.grad(ref, [images, targets])
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    assert r_img.abs().max() > 1e-6 and r_lab.abs().max() > 1e-6
    assert torch.allclose(g_img, r_img, rtol=1e-9, atol=1e-14)
    assert torch.allclose(g_lab, r_lab, rtol=1e-9, atol=1e-14)
    # the steps before the window pass no gradient: a longer unroll only changes where the window starts
    whole = window_loss_unrolled(net, OPTS[kind], w0, images, targets, plan, 0, real)
    assert not torch.allclose(torch.autograd.grad(whole, images)[0], r_img)


class SavedBytes:
    """Peak bytes of tensors autograd holds for backward (saved_tensors_hooks), released ones subtracted."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor) -> object:
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        box = type("Box", (), {})()
        box.t = t
        weakref.finalize(box, self._free, n)
        return box

    def unpack(self, box: object) -> torch.Tensor:
        return box.t

    def _free(self, n: int) -> None:
        self.live -= n

    def measure(self, fn) -> int:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            fn()
        return self.peak


def _peak(n_pre: int, window: int, bounded: bool) -> int:
    torch.manual_seed(0)
    net, w0, images, targets, real = _problem()
    plan = make_plan(len(images), n_pre + window, 6, None, CPU)
    if bounded:
        return SavedBytes().measure(lambda: window_grad(net, OPTS["adam"], w0, images, targets, plan, n_pre, real))
    loss = lambda: torch.autograd.grad(  # noqa: E731
        window_loss_unrolled(net, OPTS["adam"], w0, images, targets, plan, n_pre, real), images
    )
    return SavedBytes().measure(loss)


def test_memory_stays_flat_as_the_unroll_grows():
    short, long = _peak(0, 3, True), _peak(40, 3, True)
    assert short > 0 and long == short  # the 40 steps before the window keep no graph
    assert _peak(0, 12, True) == short  # and the window's graph is rebuilt one step at a time
    # the measurement does see graphs grow: plain back-propagation through the window
    assert _peak(0, 12, False) > 3 * _peak(0, 3, False) > short


def test_registered_with_family_and_paper():
    cls = METHODS.get("ratbptt")
    assert cls is RaTBPTT and cls.family == "performance matching" and "ICLR 2024" in cls.paper
    assert "ratbptt" in dict(catalog()) and {"quick", "cpu"} <= set(cls.presets)


def test_a_few_iterations_on_digits(digits):
    a = distill(digits, "ratbptt", 2, seed=3, preset="quick", iterations=3, device="cpu")
    b = distill(digits, "ratbptt", 2, seed=3, preset="quick", iterations=3, device="cpu")
    check_proxy(a, digits, 2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.soft and torch.allclose(a.labels.sum(1), torch.ones(20))
    assert a.provenance["config"]["window"] == 10 and a.provenance["cost"]["sample_grads"] > 0
    fixed = distill(digits, "ratbptt", 1, preset="quick", iterations=2, learn_labels=False, inner_optim="adam",
                    device="cpu")  # fmt: skip
    assert not fixed.soft and fixed.images.isfinite().all()


def test_resume_after_an_interruption_is_exact(digits, tmp_path, monkeypatch):
    kw = {"preset": "quick", "iterations": 4, "device": "cpu"}
    whole = distill(digits, "ratbptt", 1, seed=0, **kw)
    step = RaTBPTT.step

    def interrupted(self, it):
        if it == 2:
            raise KeyboardInterrupt
        return step(self, it)

    monkeypatch.setattr(RaTBPTT, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(digits, "ratbptt", 1, seed=0, saving=Saving(out=tmp_path, checkpoint_every=1), **kw)
    monkeypatch.setattr(RaTBPTT, "step", step)
    resumed = distill(digits, "ratbptt", 1, seed=0, saving=Saving(out=tmp_path, resume=True), **kw)
    assert torch.equal(whole.images, resumed.images) and torch.equal(whole.labels, resumed.labels)
    assert whole.provenance["cost"]["sample_grads"] == resumed.provenance["cost"]["sample_grads"]


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"window": 99}, "window must be an integer in \\[1, unroll\\]"),
        ({"unroll": 0}, "unroll must be a positive integer"),
        ({"inner_optim": "rmsprop"}, "inner_optim 'rmsprop' is unknown; valid: sgd, adam"),
        ({"inner_lr": -1.0}, "inner_lr must be a number > 0"),
        ({"inner_momentum": 1.0}, "inner_momentum must be a number in \\[0, 1\\)"),
        ({"clip_ema": -0.5}, "clip_ema must be a number in \\[0, 1\\)"),
        ({"batch_real": 0}, "batch_real must be an integer >= 1"),
        ({"width": 0}, "width must be a positive integer"),
        ({"bogus": 1}, "no option 'bogus'; valid options: batch_real"),
    ],
)
def test_bad_options_are_refused(digits, option, match):
    with pytest.raises(NasddError, match=match):
        distill(digits, "ratbptt", 1, preset="quick", iterations=1, device="cpu", **option)

# No accuracy test on digits: on the 8x8 digits the quick and cpu presets do NOT beat a random subset at
# ipc 1 (63.1 and 61.6 against 65.4 with the tests' short evaluation recipe; they moved the images by
# 0.12 std); the measured gain is on 28x28 data (results/distill_mnist5k.csv, distill_fashion_mnist.csv).
