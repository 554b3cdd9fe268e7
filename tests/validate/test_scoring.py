import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.train import Monitor, TrainRecipe, build_seeded, fit
from nasdd.validate import scoring
from nasdd.validate.scoring import ScoreCache, ScoringRecipe, reestimate_bn


def _bn_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


def test_bn_reestimation_changes_only_bn_statistics_and_restores_mode():
    torch.manual_seed(0)
    model = _bn_net()
    model(torch.randn(2, 1, 6, 6))  # materialise the lazy layer
    x = torch.randn(64, 1, 6, 6) * 3 + 1
    for mode in (True, False):
        model.train(mode)
        model[1].running_mean.fill_(5.0)  # stale statistics, as a short training leaves them
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert reestimate_bn(model, x, batch_size=16) == 64
        assert model.training is mode
        after = model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert "1.running_mean" in changed
        assert changed <= {"1.running_mean", "1.running_var", "1.num_batches_tracked"}  # no weight moved
        assert model[1].momentum == 0.1  # restored
    # the estimate is the batch-averaged statistics of x through the conv
    with torch.no_grad():
        h = model[0](x)
    assert torch.allclose(model[1].running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)


def test_bn_reestimation_is_a_no_op_without_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(2, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert reestimate_bn(model, torch.randn(8, 1, 5, 5)) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tse_equals_the_hand_computed_sum_on_a_tiny_run(digits):
    arch = ArchSpec.from_dict({"family": "convnet", "depth": 1, "width": 4, "activation": "relu",
                               "normalization": "none", "pooling": "avgpool"})  # fmt: skip
    x, y = digits.x_train[:40], digits.y_train[:40]
    recipe = TrainRecipe(epochs=0, steps=5, batch_size=8, lr=0.05, schedule="constant")
    model = build_seeded(arch, tuple(x.shape[1:]), digits.num_classes, 0)
    res = fit(model, x, y, recipe, seed=0, monitor=Monitor(record_losses=True))
    assert len(res.losses) == 5
    # replay by hand: the same seeded batches, losses summed
    torch.manual_seed(0)
    ref = build_seeded(arch, tuple(x.shape[1:]), digits.num_classes, 0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    perm, total = torch.randperm(40, generator=gen), 0.0
    for i in range(5):
        idx = perm[i * 8 : (i + 1) * 8]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ref(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.item()
    assert scoring.tse(res.losses) == pytest.approx(-total, rel=1e-4)
    assert scoring.tse_late(res.losses) == pytest.approx(-sum(res.losses[2:]))
    w = [0.99**4, 0.99**3, 0.99**2, 0.99, 1.0]
    assert scoring.tse_ema(res.losses) == pytest.approx(-float(np.dot(w, res.losses)))


def test_curve_extrapolation_recovers_a_power_law_and_falls_back():
    pts = [(t, 0.9 - 0.3 * (t / 40) ** -0.5) for t in (10, 20, 30, 40)]
    assert scoring.curve_extrapolate(pts, 400) == pytest.approx(0.9 - 0.3 * 10**-0.5, abs=0.01)
    assert scoring.curve_extrapolate(pts[:2], 400) == pytest.approx(pts[1][1])


def test_recipe_round_trips_and_is_refused_for_another_space_or_dataset(tmp_path):
    r = ScoringRecipe(passes=2, lr=0.05, bn_images=100, score="tse", space="convnet_cpu_pooled",
                      dataset_key="fashion_mnist-1f5d0a7741", members=("a", "b"))  # fmt: skip
    r.save(tmp_path / "r.json")
    back = ScoringRecipe.load(tmp_path / "r.json")
    assert back == r and back.key() == r.key()
    back.check(space="convnet_cpu_pooled", dataset_key="fashion_mnist-1f5d0a7741")
    with pytest.raises(NasddError, match="calibrated for space 'convnet_cpu_pooled', not 'convnet_cpu'"):
        back.check(space="convnet_cpu", dataset_key="fashion_mnist-1f5d0a7741")
    with pytest.raises(NasddError, match="calibrated for dataset fashion_mnist-1f5d0a7741, not mnist5k"):
        back.check(space="convnet_cpu_pooled", dataset_key="mnist5k-x")
    with pytest.raises(NasddError, match="used to calibrate"):
        back.refuse_members(["b", "c"])
    d = json.loads((tmp_path / "r.json").read_text())
    d["scoring_recipe"]["lr"] = 0.5
    (tmp_path / "r.json").write_text(json.dumps(d))
    with pytest.raises(NasddError, match="does not match"):
        ScoringRecipe.load(tmp_path / "r.json")
    with pytest.raises(NasddError, match="valid kinds"):
        ScoringRecipe(score="acc")
    assert r.training_key() == ScoringRecipe(passes=2, lr=0.05, score="val_acc").training_key()


def test_budget_accounts_for_the_forward_overhead():
    r = ScoringRecipe(budget=0.1, bn_images=300, curve_images=30)
    assert r.overhead_grads() == pytest.approx((300 + 4 * 30) / 3)
    assert r.train_grads(10_000) == pytest.approx(1000 - 140)
    with pytest.raises(NasddError, match="exceeds the budget"):
        ScoringRecipe(budget=0.001, bn_images=3000).train_grads(10_000)


def test_train_member_records_every_kind_within_budget_and_caches(digits, tmp_path):
    arch = ArchSpec.from_dict({"family": "convnet", "depth": 1, "width": 4, "activation": "relu",
                               "normalization": "batchnorm", "pooling": "avgpool"})  # fmt: skip
    r = ScoringRecipe(budget=0.5, passes=2, lr=0.05, batch_size=16, curve_images=20)
    cache = ScoreCache(tmp_path / "c.jsonl")
    [rec] = scoring.score_pool(cache, digits, [arch], replace(r, bn_images=60), [0], truth_grads=2000, log=False)
    assert rec["status"] == "ok" and rec["has_bn"] and rec["bn_forwards"] == 60
    assert rec["sample_grads"] + (60 + rec["curve_forwards"]) / 3 <= 0.5 * 2000 * 1.05
    for kind in scoring.SCORE_KINDS:
        assert math.isfinite(scoring.score_of(rec, kind, bn=True))
    again = ScoreCache(tmp_path / "c.jsonl")  # read back, not retrained
    assert again.get(digits.key, r, 60, arch.key(), 0)["losses"] == rec["losses"]
    for budget in (0.05, 0.07, 0.1, 0.13):  # 5 to 10 steps: the curve holds the planned points, never more
        rec = scoring.train_member(arch, digits, replace(r, budget=budget), 0, truth_grads=2000, bn_images=0)
        assert 3 <= len(rec["curve"]) <= scoring.CURVE_POINTS, (budget, rec["steps"], len(rec["curve"]))


def test_validate_adds_the_scoring_row_and_leaves_calibration_members_out(digits):
    from nasdd.spaces import draw_pool, load_space
    from nasdd.validate.audit import validate
    from nasdd.validate.config import AuditConfig

    space = load_space("convnet_cpu_pooled")
    pool = draw_pool(space, 5, 0)
    recipe = ScoringRecipe(budget=0.25, passes=2, lr=0.05, batch_size=32, score="tse", space=space.name,
                           dataset_key=digits.key, members=(pool[0].key(),))  # fmt: skip
    kw = {"peers": "", "truth_seeds": 1, "truth_recipe": "full,epochs=1", "n_resamples": 20}
    config = AuditConfig.from_text(scoring=recipe, **kw)
    v = validate(digits, pool, (), config, space=space)
    assert len(v.per_arch) == 4 and pool[0].key() not in set(v.per_arch.index.astype(str))
    assert v.config["scoring_recipe"]["members_left_out"] == 1
    assert any(str(n).startswith("scored-tse") for n in v.summary["name"])
    with pytest.raises(NasddError, match="calibrated for dataset"):
        validate(digits, pool, (), AuditConfig(peers="", scoring=ScoringRecipe(dataset_key="mnist5k-x")), space=space)
