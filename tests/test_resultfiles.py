"""The benchmarks' result files (nasdd.resultfiles): rows keyed by their settings, the command recorded."""

import sys
from pathlib import Path

import pandas as pd

from nasdd import resultfiles

ROOT = Path(__file__).resolve().parent.parent


def test_rows_are_reused_and_replaced_by_their_settings(tmp_path):
    csv = tmp_path / "r.csv"
    assert resultfiles.find(csv, {"ipc": 10}) is None
    key = ["ipc", "preset"]
    resultfiles.upsert(csv, [{"ipc": 1, "preset": "cpu", "acc": 0.5}, {"ipc": 10, "preset": "cpu", "acc": 0.7}], key)
    resultfiles.upsert(csv, [{"ipc": 10, "preset": "cpu", "acc": 0.8}, {"ipc": 10, "preset": "quick", "acc": 0.6}], key)
    df = pd.read_csv(csv)
    assert df.to_dict("records") == [
        {"ipc": 1, "preset": "cpu", "acc": 0.5},
        {"ipc": 10, "preset": "cpu", "acc": 0.8},
        {"ipc": 10, "preset": "quick", "acc": 0.6},
    ]
    assert resultfiles.find(csv, {"ipc": 10.0, "preset": "cpu"})["acc"] == 0.8  # 10 and 10.0 are the same setting
    assert resultfiles.find(csv, {"ipc": 10, "preset": "dc"}) is None and resultfiles.find(csv, {"seed": 0}) is None


def test_the_command_goes_into_the_results_readme(tmp_path, monkeypatch):
    readme = tmp_path / "results" / "README.md"
    readme.parent.mkdir()
    head = "| file | command | what |\n|---|---|---|\n"
    readme.write_text(head + "| `a.csv`, `a.png` | `python scripts/bench_a.py --ipc 1` (two runs) | a |\n\nProse.\n")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "bench_a.py"), "--ipc", "10"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resultfiles.record(readme.parent / "a.csv", readme, root=ROOT)
    assert resultfiles.record(readme.parent / "b.csv", readme, root=ROOT, argv=["--x", "a b"])
    assert not resultfiles.record(tmp_path / "elsewhere.csv", readme, root=ROOT)
    lines = readme.read_text().splitlines()
    assert lines[2] == "| `a.csv`, `a.png` | `OMP_NUM_THREADS=1 python scripts/bench_a.py --ipc 10` (two runs) | a |"
    assert lines[3] == "| `b.csv` | `OMP_NUM_THREADS=1 python scripts/bench_a.py --x 'a b'` | |"  # in the table
    assert lines[4:] == ["", "Prose."]


def test_a_row_made_by_several_commands_keeps_them_all(tmp_path, monkeypatch):
    readme = tmp_path / "results" / "README.md"
    readme.parent.mkdir()
    row = "| `c/` rows x | `nasdd distill --method M` for M in a, b, then `python scripts/bench_c.py --b 1` | c |"
    readme.write_text("| file | command | what |\n|---|---|---|\n" + row + "\n")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "bench_c.py")])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    (readme.parent / "c").mkdir()
    assert resultfiles.record(readme.parent / "c", readme, root=ROOT, argv=["--b", "2"])
    line = readme.read_text().splitlines()[2]
    assert line == row[: -len(" | c |")] + "; also `python scripts/bench_c.py --b 2` | c |"
    assert not resultfiles.record(readme.parent / "c", readme, root=ROOT, argv=["--b", "2"])  # already there
