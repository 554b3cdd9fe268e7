"""`nasdd bench`: shipped benchmarks, and a DC/DSA/DM result file imported and audited on digits with the
tau the benchmark script gives the same proxy."""

import filecmp
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from nasdd.arch import ArchSpec
from nasdd.cli import main
from nasdd.cli.bench import BENCHMARK_NAMES
from nasdd.distill import ProxySet
from nasdd.train import TrainRecipe, TrainResult
from nasdd.validate import bench
from nasdd.validate import table as tt

ROOT = Path(__file__).resolve().parents[2]
POOL = [
    ArchSpec.make("convnet", depth=1, width=8, activation=act, normalization=norm, pooling="avgpool")
    for act, norm in [("relu", "none"), ("sigmoid", "none"), ("leakyrelu", "instancenorm"), ("relu", "instancenorm")]
]


def test_shipped_benchmarks_pass_the_table_checks():
    assert tuple(bench.BENCHMARKS.names()) == BENCHMARK_NAMES  # the torch-free --help lists the same names
    for name in BENCHMARK_NAMES:
        b = bench.BENCHMARKS.get(name)
        table = b.truth()  # TruthTable.load refuses missing columns and mixed settings
        assert table.meta["dataset"] == name
        table.check(dataset_key=table.meta["dataset_key"], space=table.meta["space"])
        acc = table.accuracies()
        assert acc.notna().all().all() and len(acc.columns) >= 2 and len(acc) >= 20
        assert set(b.budgets) <= set(b.cached_budgets())
        for budget in b.cached_budgets():
            rows, scores = b.cached(budget)
            assert set(scores.index) == set(acc.index) and len(rows) >= 10
            assert scores.notna().all().all() and rows.tau.between(-1, 1).all()
    shipped, committed = bench.SHIPPED / "fashion_mnist", ROOT / "results" / "bench_fashion_mnist"
    for f in ("truth.csv", "summary.csv", "scores_1000.csv", "scores_300.csv", "scores_100.csv", "scores_30.csv"):
        assert filecmp.cmp(shipped / f, committed / f, shallow=False), f"{f}: copy results/bench_fashion_mnist/{f}"
    assert sum(p.stat().st_size for p in bench.SHIPPED.rglob("*.csv")) < 400_000  # small enough to ship


def truth_table(digits, path: Path) -> Path:
    """A truth table whose trainings are stand-ins (the audit's accounting is what is tested)."""

    def train(arch: ArchSpec, seed: int) -> TrainResult:
        return TrainResult(accuracy=0.5 + 0.1 * POOL.index(arch) + 0.01 * seed, sample_grads=6000, seconds=1.0)

    recipe = TrainRecipe.parse("full,epochs=1,batch_size=128")
    table = tt.TruthTable.new(dataset="digits", dataset_key=digits.key, space="convnet_cpu", recipe=recipe)
    tt.build(table, path, POOL, [0, 1], train, show_progress=False)
    return path


def dc_file(path: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """Exactly the structure the DC/DSA/DM code saves: {'data': [[images, labels]], 'accs_all_exps': ...}."""
    data_save = [[images.detach().cpu().clone(), labels.detach().cpu().clone()]]
    torch.save({"data": data_save, "accs_all_exps": {"ConvNet": [0.9]}}, path)
    return path


def test_a_dc_file_imports_and_audits_with_the_benchmark_scripts_tau(digits, proxy, tmp_path, monkeypatch, capsys):
    truth = truth_table(digits, tmp_path / "truth.csv")
    folder = tmp_path / "benchmark"  # the benchmark script's output is a benchmark folder
    argv = [sys.executable, str(ROOT / "scripts" / "bench_rank.py"), "--dataset", "digits", "--device", "cpu"]
    argv += ["--threads", "1", "--quiet", "--truth", str(truth), "--check", "", "--proxies", str(proxy), "--ipcs", "5"]
    argv += ["--budgets", "1/2", "--peers", "early,params", "--resamples", "50", "--out", str(folder), "--work"]
    argv += [str(tmp_path / "work"), "--storage", f"journal:{tmp_path / 'script.journal'}"]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    shutil.copy(truth, folder / "truth.csv")
    script = pd.read_csv(folder / "summary.csv").set_index("name")

    own = ProxySet.load(proxy, digits)
    mean, std = torch.tensor(digits.mean).view(1, -1, 1, 1), torch.tensor(digits.std).view(1, -1, 1, 1)
    saved = ((own.images * std + mean) - 0.3) / 0.4  # as the DC code saves: normalised with its constants
    converted = tmp_path / "dsa-folder"
    cmd = ["import-proxy", str(dc_file(tmp_path / "res_DSA_digits.pt", saved, own.labels)), "--dataset", "digits"]
    assert main([*cmd, "--normalization", "0.3,0.4", "--method", "dsa", "--out", str(converted), "--quiet"]) == 0
    same = dc_file(tmp_path / "res_random_digits.pt", own.images, own.labels)  # saved in nasdd's normalisation
    out = tmp_path / "out"
    cmd = ["bench", f"{same}=mine", str(converted), "--benchmark", str(folder), "--budgets", "1/2", "--method"]
    cmd += ["random", "--normalization", "nasdd", "--resamples", "50", "--out", str(out), "--device", "cpu"]
    cmd += ["--leaderboard", str(tmp_path / "board.csv"), "--quiet"]
    assert main(cmd) == 0
    s = pd.read_csv(out / "summary.csv").set_index("name")
    assert s.loc["mine", "tau"] == script.loc["random-ipc5", "tau"]  # one protocol: the script's tau
    assert s.loc["mine", "source"] == "yours" and s.loc["yours:dsa-ipc5", "source"] == "yours"
    assert {"random-ipc5", "params"} <= set(s.index[s.source == "cached"])
    assert s[["rho_top10", "rho_top20"]].isna().all().all()  # 4 members: no top-10/20 to speak of
    d = pd.read_csv(out / "paired.csv")
    assert set(d.a) == {"mine", "yours:dsa-ipc5"} and {"random-ipc5"} <= set(d.b)
    text = (out / "verdict.md").read_text()
    assert "mine ranks the members at τ" in text and "yours:dsa-ipc5" in text and (out / "bench.png").is_file()
    board = pd.read_csv(tmp_path / "board.csv").set_index("name")
    assert {"mine", "random-ipc5", "params"} <= set(board.index[board.status == "measured"])
    assert board.loc["dm", "status"] == "missing: no cached scores"
    assert "mine" in capsys.readouterr().out

    def no_training(*a, **k):
        raise AssertionError("a recorded score was trained again")

    monkeypatch.setattr("nasdd.validate.truth.train_arch", no_training)
    assert main(cmd) == 0  # resumed from the storage: nothing trains twice
    assert pd.read_csv(out / "summary.csv").set_index("name").loc["mine", "tau"] == s.loc["mine", "tau"]


def test_bad_benchmark_is_one_line(capsys):
    assert main(["bench", "--benchmark", "cifar99"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown benchmark 'cifar99': give one of fashion_mnist, mnist5k" in err and "\n" not in err


@pytest.mark.parametrize("k, want", [(3, 1.0), (5, 1.0)])
def test_top_spearman_looks_only_at_the_truths_best(k, want):
    from nasdd.validate.stats import top_spearman

    truth = [0.9, 0.8, 0.7, 0.6, 0.5, 0.2, 0.1]
    score = [9, 8, 7, 6, 5, 4, 100]  # the worst member scored best: only the top k are compared
    assert top_spearman(truth, score, k) == pytest.approx(want)
    assert top_spearman(truth, score, 6) == pytest.approx(1.0)
    assert math.isnan(top_spearman(truth, score, 7)) and math.isnan(top_spearman(truth, score, 2))  # no top
