import json

import numpy as np
import pandas as pd
import pytest

from nasdd.arch import ArchSpec
from nasdd.cli import main
from nasdd.cost import training_grads
from nasdd.distill import distill
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe
from nasdd.validate import audit, truth, validate
from nasdd.validate.config import AuditConfig
from nasdd.validate.pool import write_archs

POOL = [
    ArchSpec.make("convnet", depth=1, width=8, activation=act, normalization=norm, pooling="avgpool")
    for act, norm in [("relu", "instancenorm"), ("sigmoid", "none"), ("leakyrelu", "batchnorm"), ("relu", "none")]
]
OPTS = dict(
    truth_recipe="full,epochs=1,batch_size=128", proxy_recipe="proxy,epochs=5", early_epochs=[0.1], n_resamples=20
)


def run(bundle, pool, proxies=(), *, out=None, **settings):
    """`validate` on the CPU with its settings given as command-line-style text, parsed into an AuditConfig."""
    return validate(bundle, pool, proxies, AuditConfig.from_text(**settings), out=out, device="cpu")


@pytest.fixture
def calls(monkeypatch):
    """Count every training (all of them go through nasdd.train.train_arch)."""
    seen = []
    real = truth.train_arch

    def counting(spec, *args, **kwargs):
        seen.append((spec.key(), kwargs["seed"]))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(truth, "train_arch", counting)
    return seen


def test_validate_tables_and_rerun_trains_nothing(digits, tmp_path, calls):
    proxy = distill(digits, "random", 2, seed=1)
    kw = dict(OPTS, peers="random,early,params,naswot", storage=f"sqlite:///{tmp_path / 'r.db'}", out=tmp_path / "o")
    first = run(digits, POOL, [proxy], truth_seeds=2, ipc=3, **kw)
    # truth 4 archs x 2 seeds, the proxy 4, the random peer (ipc 3) 4, early stopping 4
    assert len(calls) == 20
    per_arch, summary = first.per_arch, first.summary
    assert list(per_arch["arch_key"]) == [a.key() for a in POOL]
    assert {"truth_s0", "truth_s1", "truth_mean", "random-ipc2", "random-ipc3", "early-0.099ep", "naswot"} <= set(
        per_arch.columns
    )
    assert np.allclose(per_arch["truth_mean"], per_arch[["truth_s0", "truth_s1"]].mean(axis=1))
    names = list(summary["name"])
    assert names[:2] == ["noise_ceiling", "ground_truth"]
    proxy_row = summary.set_index("name").loc["random-ipc2"]
    assert proxy_row["tau_low"] <= proxy_row["tau"] <= proxy_row["tau_high"]
    assert proxy_row["cost_sample_grads"] == 4 * 5 * 20  # 4 archs x 5 epochs x 20 images
    truth_row = summary.set_index("name").loc["ground_truth"]
    assert proxy_row["speedup_sample_grads"] == pytest.approx(truth_row["cost_sample_grads"] / 2 / 400)
    for f in ("per_arch.csv", "summary.csv", "config.json", "pool.jsonl"):
        assert (tmp_path / "o" / f).exists()
    assert json.loads((tmp_path / "o" / "config.json").read_text())["splits"]["truth"] == "test"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "o" / "summary.csv")[["name"]], summary[["name"]])

    # a rerun (another process would do the same) reads everything back from the storage
    n = len(calls)
    again = run(digits, POOL, [proxy], truth_seeds=2, ipc=3, **kw)
    assert len(calls) == n
    pd.testing.assert_frame_equal(again.per_arch, per_arch)
    # a third truth seed trains only the new seed
    run(digits, POOL, [proxy], truth_seeds=3, ipc=3, **{**kw, "peers": "params"})
    assert sorted(calls[n:]) == sorted((a.key(), 2) for a in POOL)


def test_validate_in_memory_and_errors(digits):
    with pytest.raises(NasddError, match="at least 3"):
        run(digits, POOL[:2], peers="params", **OPTS)
    with pytest.raises(NasddError, match="unknown peer"):
        run(digits, POOL, peers="nope", **OPTS)
    res = run(digits, POOL[:3], peers="params", truth_seeds=1, **OPTS)
    assert "noise_ceiling" not in set(res.summary["name"])  # one seed: no ceiling


def test_cli(digits, tmp_path, capsys):
    archs = tmp_path / "a.jsonl"
    write_archs(archs, POOL[:3])
    argv = ["validate", "--dataset", "digits", "--archs", str(archs), "--peers", "params,synflow", "--quiet"]
    argv += ["--truth-recipe", "full,epochs=1,batch_size=128", "--resamples", "20", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert "synflow" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "o" / "per_arch.csv")) == 3
    assert main(["validate", "--dataset", "digits", "--pool", "4", "--out", str(tmp_path / "p")]) == 2
    assert "--space" in capsys.readouterr().err
    assert (
        main(
            [
                "validate",
                "--dataset",
                "digits",
                "--space",
                "convnet_cpu",
                "--pool",
                "4",
                "--proxies",
                str(tmp_path),
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    assert "not a proxy folder" in capsys.readouterr().err


def test_budget_matching():
    recipe = TrainRecipe.parse("proxy,epochs=30", "proxy")
    assert training_grads(recipe, 100) == 3000
    # 100 images in batches of 64: epochs of 64 + 36; 7 steps = 3 epochs + one batch of 64
    assert training_grads(TrainRecipe.parse("proxy,steps=7,batch_size=64", "proxy"), 100) == 3 * 100 + 64


def test_auto_budgets_match_proxy_cost_and_stay_early(digits):
    def steps(early_epochs, proxy_grads):
        recipe = TrainRecipe.parse("full,epochs=3,batch_size=100", "full")
        ctx = audit._Audit(None, digits, [], "cpu", recipe, AuditConfig(early_epochs=early_epochs))
        return audit._early_steps(ctx, proxy_grads)

    n = len(digits.y_train)  # 1295: 13 steps per epoch, 39 in all
    assert steps([1.0], []) == [13]
    # proxy cost 1000 sample-gradients: 0.5x, 1x, 2x = 5, 10, 20 steps of 100
    assert steps(None, [1000]) == [5, 10, 20]
    assert steps(None, [3000]) == [15, 30]  # 60 steps would not stop early
    assert steps(None, [100 * n]) == [19]


def test_coreset_peer_already_audited_as_proxy_is_skipped(digits):
    proxy = distill(digits, "random", 2, seed=1)
    res = run(digits, POOL[:3], [proxy], peers="random", truth_seeds=1, **OPTS)
    assert list(res.summary["name"]) == ["ground_truth", "random-ipc2"]


def test_validate_reports_progress_in_a_log(tmp_path):
    """Off a terminal (a log, a pipe) validate prints progress lines with counts and an ETA, not silence."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    archs = tmp_path / "a.jsonl"
    write_archs(archs, POOL[:3])
    argv = ["validate", "--dataset", "digits", "--archs", str(archs), "--peers", "params", "--truth-seeds", "2"]
    argv += ["--truth-recipe", "full,epochs=1,batch_size=128", "--resamples", "20", "--out", str(tmp_path / "o")]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "nasdd", *argv, "--device", "cpu"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(ln.startswith("train ground_truth: 6/6 (100%) jobs, ") and "seed 1]" in ln for ln in lines), lines
    assert any(ln.startswith("zero-cost params: 3/3 (100%) jobs, ") for ln in lines), lines  # every stage
    # (lines with an ETA in between, for slower jobs: tests/test_utils.py::test_log_progress_prints_lines_with_eta)


def test_stack_peer_is_fitted_on_some_members_and_judged_on_the_others(digits):
    from nasdd.validate.calibrate import StackRanker, splits

    pool = POOL + [
        ArchSpec.make("convnet", depth=2, width=8, activation=act, normalization="none", pooling="avgpool")
        for act in ("relu", "sigmoid")
    ]
    opts = dict(OPTS, peers="params,naswot,stack", truth_seeds=1, stack_members=3)
    res = run(digits, pool, **opts)
    keys = [a.key() for a in pool]
    cal, ev = splits(keys, 3, 1, seed=0)[0]
    per_arch = res.per_arch.set_index("arch_key")
    assert per_arch.loc[cal, "stack"].isna().all() and per_arch.loc[ev, "stack"].notna().all()
    row = res.summary.set_index("name").loc["stack"]
    assert row["n_archs"] == 3 and row["calibration_members"] == 3 and row["features"] == 2
    assert row["paired_against"] in ("params", "naswot") and row["dtau_low"] <= row["dtau_high"]
    others = res.summary.set_index("name").loc[["params", "naswot"]]
    assert row["cost_sample_grads"] >= others["cost_sample_grads"].sum() + row["calibration_sample_grads"] > 0
    # the row is the ranker fitted on the calibration members' truth alone
    factors = per_arch[["depth", "width", "activation", "normalization", "pooling"]]
    scores = per_arch[["params", "naswot"]]
    by_hand = StackRanker().fit(digits.key, scores.loc[cal], factors, per_arch["truth_mean"])
    assert np.allclose(by_hand.predict(digits.key, scores.loc[ev], factors), per_arch.loc[ev, "stack"])
    with pytest.raises(NasddError, match="stack_members"):
        run(digits, pool, **dict(opts, stack_members=4))
