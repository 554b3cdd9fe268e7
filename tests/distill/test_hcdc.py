"""HCDC: the relaxed supernet, the Neumann hypergradient, the synthetic validation set and the method."""

import pytest
import torch

from nasdd.distill import Saving, distill
from nasdd.distill.hcdc import factor_distance
from nasdd.distill.hypergrad import InnerProblem, exact_hypergradient, hypergradient
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.models import build
from nasdd.spaces import load_space
from nasdd.supernet import RelaxedConvNet, space_choices


@pytest.mark.parametrize("size", [8, 28])
def test_supernet_at_a_one_hot_mixture_is_the_member_it_selects(size):
    space = load_space("convnet_cpu_pooled")
    net = RelaxedConvNet(space_choices(space), 1, 10, size).train()
    x = torch.randn(5, 1, size, size)
    members = list(space.enumerate())[:: 7 if size == 8 else 23]  # every factor value appears
    for f in ("depth", "width", "activation", "normalization", "pooling"):
        assert {m.get(f) for m in members} == set(space.grid()[f])
    for arch in members:
        member = build(arch, 1, size, 10).train()
        net.load_member_(arch, member)
        out = net(x, net.relaxation(net.logits(arch)))
        assert torch.allclose(out, member(x), atol=1e-5), arch
    mixed = net(x, net.relaxation(net.logits(arch, mix=0.5)))
    assert not torch.allclose(mixed, member(x), atol=1e-3)  # a real mixture is another network


def _ridge_problem():
    """Logistic regression with one weight-decay hyperparameter per feature group (exp(lam_g))."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    xv = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    y, yv = (x[:, 0] + 0.5 * x[:, 1] > 0).float(), (xv[:, 0] + 0.5 * xv[:, 1] > 0).float()
    groups = torch.tensor([0, 0, 1, 1, 2, 2])

    def train_loss(w, lam):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)
        return bce + 0.5 * (lam.exp()[groups] * w**2).sum()

    def val_loss(w, lam):
        return torch.nn.functional.binary_cross_entropy_with_logits(xv @ w, yv)

    lam = torch.tensor([-2.0, -1.0, 0.0], dtype=torch.float64)
    w = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = train_loss(w, lam)
        loss.backward()
        return loss

    opt.step(closure)
    return train_loss, val_loss, w.detach(), lam


def test_neumann_hypergradient_matches_the_exact_inverse_hessian():
    """Tolerance: relative error 1e-4 after 3000 Neumann steps at alpha = 1 / lambda_max(H) (float64)."""
    train_loss, val_loss, w, lam = _ridge_problem()
    inner = InnerProblem(train_loss, w, lam)
    wv, lv = w.clone().requires_grad_(True), lam.clone().requires_grad_(True)
    d_w, d_lam = torch.autograd.grad(val_loss(wv, lv), (wv, lv), allow_unused=True)
    d_lam = torch.zeros_like(lam) if d_lam is None else d_lam
    exact = exact_hypergradient(inner, d_w, d_lam)
    h = torch.stack([inner.hvp(e) for e in torch.eye(6, dtype=torch.float64)])
    alpha = 1.0 / float(torch.linalg.eigvalsh(h).max())
    approx = hypergradient(inner, d_w, d_lam, alpha, 3000)
    assert exact.abs().max() > 1e-3  # the hyperparameters matter on this problem
    assert torch.allclose(approx, exact, rtol=1e-4, atol=1e-7)
    short = hypergradient(inner, d_w, d_lam, alpha, 1)
    assert not torch.allclose(short, exact, rtol=1e-2)  # the series is truncated, not exact by accident
    # the finite-difference derivative of the validation loss at the re-trained optimum agrees too
    eps = 1e-3
    for g in range(3):
        vals = []
        for s in (eps, -eps):
            lam2 = lam.clone()
            lam2[g] += s
            w2 = w.clone().requires_grad_(True)
            opt = torch.optim.LBFGS([w2], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

            def closure(w2=w2, lam2=lam2, opt=opt):
                opt.zero_grad()
                loss = train_loss(w2, lam2)
                loss.backward()
                return loss

            opt.step(closure)
            vals.append(float(val_loss(w2.detach(), lam2)))
        assert abs((vals[0] - vals[1]) / (2 * eps) - float(exact[g])) < 1e-3


def test_factor_distance_is_per_factor_cosine():
    a = torch.tensor([1.0, -1.0, 2.0, 0.0, -2.0])
    assert float(factor_distance(a, a, [2, 3])) == pytest.approx(0.0, abs=1e-6)
    b = torch.tensor([-1.0, 1.0, 2.0, 0.0, -2.0])
    assert float(factor_distance(a, b, [2, 3])) == pytest.approx(2.0, abs=1e-6)


def _with_val(proxy: ProxySet, n: int = 2) -> ProxySet:
    k = proxy.meta["num_classes"]
    gen = torch.Generator().manual_seed(3)
    return ProxySet(
        images=proxy.images,
        labels=proxy.labels,
        meta=proxy.meta,
        provenance=proxy.provenance,
        val_images=torch.randn(n * k, *proxy.images.shape[1:], generator=gen),
        val_labels=torch.arange(k).repeat_interleave(n),
    )


def test_a_synthetic_validation_set_round_trips_and_is_checksummed(digits, tmp_path):
    plain = distill(digits, "random", 2, seed=0)
    proxy = _with_val(plain)
    assert proxy.has_val and not plain.has_val and proxy.id != plain.id
    proxy.save(tmp_path / "p")
    back = ProxySet.load(tmp_path / "p", digits)
    assert torch.equal(back.val_images, proxy.val_images) and torch.equal(back.val_labels, proxy.val_labels)
    assert back.id == proxy.id
    plain.save(tmp_path / "q")
    assert ProxySet.load(tmp_path / "q").id == plain.id and not ProxySet.load(tmp_path / "q").has_val
    data = (tmp_path / "p" / "proxy.pt").read_bytes()
    (tmp_path / "p" / "proxy.pt").write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    with pytest.raises(NasddError, match="checksum"):
        ProxySet.load(tmp_path / "p")
    with pytest.raises(NasddError, match="hard labels"):
        ProxySet(
            images=plain.images,
            labels=plain.labels,
            meta=plain.meta,
            val_images=plain.images,
            val_labels=torch.zeros(len(plain.images), 10),
        )


def test_search_and_validate_score_on_the_synthetic_validation_set(digits, tmp_path, capsys):
    from nasdd.arch import ArchSpec
    from nasdd.search.objective import training_data
    from nasdd.validate import validate
    from nasdd.validate.config import AuditConfig

    plain = distill(digits, "random", 3, seed=0)
    proxy = _with_val(plain, 3)
    data = training_data(proxy, digits, torch.device("cpu"))
    assert torch.equal(data.x_val, proxy.val_images) and data.scored_on.startswith("synthetic validation set")
    assert training_data(plain, digits, torch.device("cpu")).scored_on.startswith("real val split")
    pool = [
        ArchSpec.make("convnet", depth=1, width=8, activation=a, normalization="none", pooling="avgpool")
        for a in ("relu", "sigmoid", "leakyrelu")
    ]
    kw = dict(truth_recipe="full,epochs=1,batch_size=128", proxy_recipe="proxy,epochs=3", n_resamples=10)
    res = validate(digits, pool, [plain, proxy], AuditConfig.from_text(peers="", **kw), device="cpu")
    rows = res.summary.set_index("name")
    split = rows.loc[rows.kind == "proxy", "split"].tolist()
    assert sorted(split) == ["synthetic_val", "val"]
    per = res.per_arch
    cols = [c for c in per.columns if c.startswith("random-ipc3")]
    assert len(cols) == 2 and not per[cols[0]].equals(per[cols[1]])  # different validation data, other scores
    # the synthetic set is random noise: accuracies on it are multiples of 1/30
    syn = rows.index[rows.split == "synthetic_val"][0]
    assert all(abs(v * 30 - round(v * 30)) < 1e-6 for v in per[syn])
    # the search command says what it scored on
    from nasdd.cli import main

    proxy.save(tmp_path / "p")
    args = [
        "search",
        "--dataset",
        "digits",
        "--space",
        "tests/fixtures/tiny_space.yaml",
        "--proxy",
        str(tmp_path / "p"),
    ]
    args += [
        "--study",
        "hcdc-test",
        "--trials",
        "2",
        "--recipe",
        "proxy,epochs=2",
        "--out",
        str(tmp_path / "s"),
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "scored on the synthetic validation set (30 images)" in capsys.readouterr().out


def test_hcdc_quick_runs_counts_cost_and_resumes_exactly(digits, tmp_path):
    kw = dict(preset="quick", iterations=4, reinit_every=10, device="cpu")
    full = distill(digits, "hcdc", 2, seed=1, **kw)
    assert full.has_val and full.val_images.shape == (20, 1, 8, 8)
    assert torch.equal(full.images, distill(digits, "random", 2, seed=1).images)  # the training set, unchanged
    assert full.provenance["cost"]["sample_grads"] > 4 * 16 * 5  # inner training, HVPs and image updates
    assert full.provenance["moved"] > 0 and full.val_images.isfinite().all()
    distill(digits, "hcdc", 2, seed=1, saving=Saving(out=tmp_path, keep_checkpoint=True), **{**kw, "iterations": 2})
    resumed = distill(digits, "hcdc", 2, seed=1, saving=Saving(out=tmp_path, resume=True, overwrite=True), **kw)
    assert torch.allclose(full.val_images, resumed.val_images, atol=1e-6)
    assert resumed.provenance["cost"]["sample_grads"] == full.provenance["cost"]["sample_grads"]
    cut = distill(digits, "hcdc", 2, seed=1, **{**kw, "iterations": 2})
    assert not torch.allclose(cut.val_images, full.val_images, atol=1e-6)  # the last two iterations moved it


def test_hcdc_refuses_bad_options(digits):
    with pytest.raises(NasddError, match="valid options"):
        distill(digits, "hcdc", 1, neumann_typo=3)
    with pytest.raises(NasddError, match="another method"):
        distill(digits, "hcdc", 1, preset="quick", train_method="hcdc")
    with pytest.raises(NasddError, match="cell201"):
        distill(digits, "hcdc", 1, preset="quick", match_space="cell201")
