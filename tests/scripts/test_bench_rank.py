"""The ranking benchmark's command (scripts/bench_rank.py, run as a user runs it): K-seed scoring
(--score-seeds) and named proxies, on digits; rows of earlier runs kept."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nasdd.arch import ArchSpec
from nasdd.train import TrainRecipe, TrainResult
from nasdd.validate import table as tt

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_rank.py"

POOL = [
    ArchSpec.make("convnet", depth=1, width=8, activation=act, normalization=norm, pooling="avgpool")
    for act, norm in [("relu", "none"), ("sigmoid", "none"), ("leakyrelu", "instancenorm"), ("relu", "instancenorm")]
]
TRUTH_GRADS = 6000  # per truth training: a budget of 1/2 is 3000 sample-gradients per candidate


def truth_table(digits, path: Path) -> Path:
    """A truth table whose trainings are stand-ins (the benchmark's accounting is what is tested)."""

    def train(arch: ArchSpec, seed: int) -> TrainResult:
        return TrainResult(accuracy=0.5 + 0.1 * POOL.index(arch), sample_grads=TRUTH_GRADS, seconds=1.0)

    recipe = TrainRecipe.parse("full,epochs=1,batch_size=128")
    table = tt.TruthTable.new(dataset="digits", dataset_key=digits.key, space="convnet_cpu", recipe=recipe)
    tt.build(table, path, POOL, [0, 1], train, show_progress=False)
    return path


def run(tmp_path: Path, truth: Path, proxy: Path | str, seeds: str) -> None:
    argv = [sys.executable, str(SCRIPT), "--dataset", "digits", "--device", "cpu", "--threads", "1", "--quiet"]
    argv += ["--truth", str(truth), "--check", "", "--proxies", str(proxy), "--ipcs", "5", "--budgets", "1/2"]
    argv += ["--peers", "early,params", "--score-seeds", seeds, "--resamples", "20", "--out", str(tmp_path / "res")]
    argv += ["--work", str(tmp_path / "work"), "--storage", f"journal:{tmp_path / 'scores.journal'}"]
    subprocess.run(argv, check=True, capture_output=True, text=True)


def test_k_seeds_split_the_budget_and_sit_beside_one_seed(digits, proxy, tmp_path):
    truth = truth_table(digits, tmp_path / "truth.csv")
    run(tmp_path, truth, proxy, "1")
    run(tmp_path, truth, proxy, "3")  # a later K=3 run keeps the K=1 rows
    s = pd.read_csv(tmp_path / "res" / "summary.csv").set_index("name")
    early = sorted((n for n in s.index if n.startswith("early-")), key=lambda n: n.endswith(" x3"))
    assert set(s.index) - set(early) == {"random-ipc5", "random-ipc5 x3", "params"}
    assert len(early) == 2 and early[1].endswith(" x3") and not early[0].endswith(" x3")
    assert s.loc[early, "seeds"].tolist() == [1, 3]
    assert s.loc["random-ipc5", "seeds"] == 1 and s.loc["random-ipc5 x3", "seeds"] == 3
    assert s.loc["params", "seeds"] == 1  # zero-cost: not a training, one row whatever K
    budget = TRUTH_GRADS / 2
    for name in ("random-ipc5", "random-ipc5 x3"):  # K trainings of B/K each: B per candidate in all
        assert s.loc[name, "grads_per_candidate"] == pytest.approx(budget, rel=0.05)
    per_training = s.loc["random-ipc5 x3", "cost_sample_grads"] / (len(POOL) * 3)
    assert per_training == pytest.approx(budget / 3, rel=0.05)
    scores = pd.read_csv(tmp_path / "res" / "scores_2.csv", index_col=0)
    assert {"random-ipc5@1/2", "random-ipc5 x3@1/2", "params@1/2"} <= set(scores.columns)
    d = pd.read_csv(tmp_path / "res" / "paired.csv")
    vs_peer = d[d.b_kind.str.startswith("peer")]
    assert set(vs_peer.a) == {"random-ipc5", "random-ipc5 x3"}  # both K against one best cheap peer
    cheap = s[s.kind.str.startswith("peer")].tau.idxmax()
    assert set(vs_peer.b) == {cheap}
    assert set(d[d.b_kind == "proxy"].a) | set(d[d.b_kind == "proxy"].b) == {"random-ipc5", "random-ipc5 x3"}


def test_a_named_proxy_gets_its_own_rows(digits, proxy, tmp_path):
    truth = truth_table(digits, tmp_path / "truth.csv")
    run(tmp_path, truth, f"{proxy}=random-long", "1")
    run(tmp_path, truth, proxy, "1")  # the same proxy unnamed: its automatic rows sit beside
    s = pd.read_csv(tmp_path / "res" / "summary.csv").set_index("name")
    assert {"random-long", "random-ipc5"} <= set(s.index)
    assert s.loc["random-long", "tau"] == s.loc["random-ipc5", "tau"]  # one proxy, the same cached trainings
    scores = pd.read_csv(tmp_path / "res" / "scores_2.csv", index_col=0)
    assert {"random-long@1/2", "random-ipc5@1/2"} <= set(scores.columns)
