"""Space-aware matching (`match_space`): the pool and the per-iteration members are reproducible and
spread over the space's factors, every iterative method distils through members of mixed depth, width,
normalisation and pooling, runs resume exactly, mtt keeps one expert buffer per member, and rankdm."""

from pathlib import Path

import pytest
import torch

from nasdd import cli
from nasdd.distill import Saving, catalog, distill
from nasdd.distill.dm import DistributionMatching
from nasdd.errors import NasddError
from nasdd.spaces import factor_counts, load_space

from .helpers import check_proxy, mean_accuracy, random_accuracy

MIXED = str(Path(__file__).resolve().parents[1] / "fixtures" / "mixed_space.yaml")
# a few cheap iterations per method (digits, tiny sizes)
CHEAP = {
    "dm": {"batch_real": 8},
    "rankdm": {"batch_real": 8, "archs_per_iteration": 3},
    "cafe": {"batch_real": 8, "query_per_class": 4, "window": 2, "max_outer": 2, "max_inner": 1},
    "dc": {"batch_real": 4, "outer_loop": 2, "inner_loop": 1},
    "dsa": {"batch_real": 4, "outer_loop": 2, "inner_loop": 1},
    "kip": {"batch_real": 32, "models": 2},
    "krr": {"batch_real": 32, "models": 2},
    "frepo": {"batch_real": 32, "pool_size": 2, "max_online_steps": 2},
    "dd": {"batch_real": 32, "unroll_steps": 2},
    "ratbptt": {"batch_real": 32, "unroll": 4, "window": 2},
    "mtt": {"num_experts": 1, "expert_epochs": 1, "max_start_epoch": 0, "syn_steps": 2, "dsa": "none"},
}


def _distiller(seed=0, pool=12, **kw) -> DistributionMatching:
    d = DistributionMatching(ipc=1, seed=seed, match_space=MIXED, match_pool=pool, **kw)
    d._draw_match_pool()
    return d


def test_pool_and_members_are_reproducible_by_seed_and_cover_the_factors():
    space = load_space(MIXED)
    d = _distiller(seed=3)
    assert d.pool_ == _distiller(seed=3).pool_ != _distiller(seed=4).pool_
    assert len(set(d.pool_)) == 12
    for factor, counts in factor_counts(d.pool_, space).items():
        options = next(p for p in space.params if p.name == factor).options()
        assert set(counts) == set(options), factor  # every depth, width, norm and pooling is drawn
        assert max(counts.values()) - min(counts.values()) <= 1, factor
    first_pass = [d.matching_arch(it) for it in range(12)]
    assert sorted(map(str, first_pass)) == sorted(map(str, d.pool_))  # each member once per pass
    assert [d.matching_arch(it) for it in range(30)] == [_distiller(seed=3).matching_arch(it) for it in range(30)]
    assert [d.matching_arch(it) for it in range(12, 24)] != first_pass  # a fresh order per pass
    for it in range(10):
        assert len(set(d.matching_archs(it, 5))) == 5  # distinct members within an iteration


def test_pool_is_capped_by_the_space_and_bad_inputs_are_one_line_errors(digits):
    assert len(_distiller(pool=100).pool_) == 48
    with pytest.raises(NasddError, match=r"unknown search space 'nope'; give a YAML path or one of: .*convnet_cpu"):
        distill(digits, "dm", 1, iterations=1, match_space="nope")
    with pytest.raises(NasddError, match="`match_pool` needs `match_space`"):
        distill(digits, "dm", 1, iterations=1, match_pool=4)
    with pytest.raises(NasddError, match="`match_pool` must be a positive integer"):
        distill(digits, "dm", 1, iterations=1, match_space=MIXED, match_pool=0)
    with pytest.raises(NasddError, match="method herding selects real images and matches no network"):
        distill(digits, "herding", 1, match_space=MIXED)
    with pytest.raises(NasddError, match="rankdm matches a pool of architectures: give `match_space`"):
        distill(digits, "rankdm", 1, iterations=1)


@pytest.mark.parametrize("method", sorted(CHEAP))
def test_every_iterative_method_distils_through_members_of_a_mixed_space(digits, method, tmp_path):
    kw = {**CHEAP[method], **({"buffer_root": str(tmp_path)} if method == "mtt" else {})}
    proxy = distill(digits, method, 1, seed=0, iterations=4, device="cpu", match_space=MIXED, match_pool=4, **kw)
    check_proxy(proxy, digits, 1)
    config = proxy.provenance["config"]
    assert config["match_space"] == "mixed" and len(config["match_pool"]) == 4
    assert proxy.provenance["cost"]["sample_grads"] > 0
    if method == "mtt":
        assert len(proxy.provenance["experts"]["folder"]) == 4  # one expert buffer per member


@pytest.mark.parametrize("method", ["dm", "dc", "frepo"])
def test_resume_with_a_match_space_is_exact(digits, method, tmp_path):
    kw = {**CHEAP[method], "device": "cpu", "match_space": MIXED, "match_pool": 3}
    full = distill(digits, method, 1, seed=2, iterations=4, **kw)
    distill(digits, method, 1, seed=2, iterations=2, saving=Saving(out=tmp_path, keep_checkpoint=True), **kw)
    saving = Saving(out=tmp_path, resume=True, overwrite=True, keep_checkpoint=True)
    resumed = distill(digits, method, 1, seed=2, iterations=4, saving=saving, **kw)
    assert torch.allclose(full.images, resumed.images, atol=1e-6)
    (tmp_path / "proxy.json").unlink()
    with pytest.raises(NasddError, match="another configuration"):  # another pool is another configuration
        distill(digits, method, 1, 2, iterations=4, saving=Saving(tmp_path, resume=True), **{**kw, "match_pool": 4})


def test_fixed_arch_runs_are_unchanged_by_the_seam(digits):
    proxy = distill(digits, "dm", 1, seed=0, iterations=3, batch_real=8)
    assert "match_space" not in proxy.provenance["config"]  # old checkpoints and provenance stay valid


def test_expert_buffers_of_several_members_are_reused_and_extended(digits, tmp_path):
    from nasdd.distill import METHODS

    kw = {**CHEAP["mtt"], "buffer_root": str(tmp_path), "device": "cpu", "match_space": MIXED, "match_pool": 2}
    first = METHODS.get("mtt")(ipc=1, iterations=1, **kw)
    first.run(digits)
    assert len(first.buffers) == 2 and all(b.trained_epochs == 1 for b in first.buffers.values())
    more = METHODS.get("mtt")(ipc=1, iterations=2, **{**kw, "num_experts": 2, "max_start_epoch": 1})
    more.run(digits)
    for arch, buf in more.buffers.items():
        assert buf.folder == first.buffers[arch].folder and arch.key() in buf.folder.name  # keyed per member
        assert buf.trained_epochs == 1 + 2  # expert 0 extended by one epoch, expert 1 trained for two
        assert [t.shape[0] for t in buf.trajectories] == [3, 3]
        assert torch.equal(buf.trajectories[0][:2], first.buffers[arch].trajectories[0])
    again = METHODS.get("mtt")(ipc=1, iterations=1, **{**kw, "num_experts": 2, "max_start_epoch": 1})
    again.run(digits)
    assert all(b.trained_epochs == 0 for b in again.buffers.values())


def test_rankdm_weights_the_worst_served_member_and_beats_random(digits):
    d = DistributionMatching  # the per-architecture loss rankdm reuses
    assert issubclass(__import__("nasdd.distill.rankdm", fromlist=["RankDM"]).RankDM, d)
    proxy = distill(digits, "rankdm", 1, seed=0, preset="quick")
    check_proxy(proxy, digits, 1)
    assert proxy.provenance["config"]["match_space"] == "convnet_cpu"
    assert mean_accuracy(proxy, digits) > random_accuracy(digits)


def test_rankdm_objective_is_the_softmax_weighted_sum_of_member_gradients(digits):
    from nasdd.distill import METHODS

    d = METHODS.get("rankdm")(ipc=1, iterations=0, match_space=MIXED, match_pool=4, archs_per_iteration=4)
    d.run(digits)
    xr, yr = d.sampler()
    nets = [d.network(a).requires_grad_(False) for a in d.matching_archs(0, 4)]
    r = torch.stack([d.distance(n, xr, yr, seed=1) for n in nets])
    t = float(d.opts.temperature)
    (g_rank,) = torch.autograd.grad(t * torch.logsumexp(r / t, 0), d.images, retain_graph=True)
    w = torch.softmax(r.detach() / t, 0)
    (g_weighted,) = torch.autograd.grad((w * r).sum(), d.images)
    assert torch.allclose(g_rank, g_weighted, atol=1e-6)
    assert w.argmax() == r.argmax()  # the member the proxy serves worst gets the largest weight


def test_cli_match_space_and_list_methods(tmp_path, capsys):
    argv = ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "2", "--quiet"]
    argv += ["--option", "batch_real=8", "--out", str(tmp_path / "p"), "--match-space", MIXED, "--match-pool", "2"]
    assert cli.main(argv) == 0
    assert cli.main([*argv[:-6], "--out", str(tmp_path / "q"), "--match-space", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown search space 'nope'" in err and "convnet_cpu" in err
    assert "rankdm" in dict(catalog())


def test_experts_cli_trains_the_buffers_of_the_match_pool(digits, tmp_path, capsys):
    argv = ["experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "1", "--quiet"]
    argv += ["--buffer-root", str(tmp_path), "--match-space", MIXED, "--match-pool", "2", "--seed", "5"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("trained 1 epochs now") == 2
    kw = {**CHEAP["mtt"], "buffer_root": str(tmp_path), "device": "cpu", "match_space": MIXED, "match_pool": 2}
    from nasdd.distill import METHODS

    d = METHODS.get("mtt")(ipc=1, seed=5, iterations=1, **kw)
    d.run(digits)
    assert all(b.trained_epochs == 0 for b in d.buffers.values())  # the distillation reuses both buffers
