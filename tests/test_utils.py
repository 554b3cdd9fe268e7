import hashlib
import json
import os
import random
import stat
import sys

import numpy as np
import pytest
import torch

from nasdd.errors import NasddError
from nasdd.utils import (
    _read_umask,
    atomic_open,
    atomic_path,
    ensure_dir,
    file_sha256,
    progress,
    resolve_device,
    seconds_since_start,
    seed_everything,
    set_quiet,
    stable_hash,
    write_json,
)


def test_stable_hash_is_fixed_and_order_free():
    obj = {"b": [1, 2.5, "x"], "a": None}
    assert stable_hash(obj) == "cacedc786abc936f"  # the same on every machine and in every process
    assert stable_hash({"a": None, "b": [1, 2.5, "x"]}) == stable_hash(obj)
    assert stable_hash(obj, 8) == "cacedc78"
    assert stable_hash({"a": 1}) != stable_hash({"a": "1"})


def test_atomic_open_replaces_whole_file_or_nothing(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_open(path) as f:
        f.write("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half-writ")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "first"
    assert os.listdir(path.parent) == ["out.txt"]  # no temporary file left behind
    with atomic_open(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_atomic_path(tmp_path):
    target = tmp_path / "model.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".pt" and tmp != target
        torch.save({"w": torch.ones(2)}, tmp)
        assert not target.exists()
    assert torch.equal(torch.load(target)["w"], torch.ones(2))
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyError("fail")
    assert torch.equal(torch.load(target)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pt"]


def test_write_json_and_file_sha256(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"z": 1, "a": [1, 2], "p": tmp_path})
    text = path.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"z"')
    assert json.loads(text)["p"] == str(tmp_path)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_ensure_dir(tmp_path):
    assert ensure_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NasddError, match="is a file; choose another `out`"):
        ensure_dir(tmp_path / "file")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(NasddError, match="unknown device 'tpu'; valid devices: auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(NasddError, match="no CUDA GPU is available; use `device` cpu or auto"):
        resolve_device("cuda")


def test_seed_everything():
    draws = []
    for _ in range(2):
        g = seed_everything(11)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item()))
    assert draws[0] == draws[1]


def test_quiet_silences_every_progress_bar(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert not progress(range(3), disable=False).disable
    set_quiet(True)
    try:
        assert progress(range(3)).disable and progress(range(3), disable=False).disable
    finally:
        set_quiet(False)
    assert progress(range(3), disable=True).disable


def test_no_progress_bar_off_a_terminal(monkeypatch):
    from nasdd.utils import LogProgress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert isinstance(progress(range(3)), LogProgress)  # lines for logs, not a bar
    assert progress(range(3), disable=None).disable  # the caller prints lines of its own
    set_quiet(True)
    try:
        assert progress(range(3)).disable
    finally:
        set_quiet(False)


def test_atomic_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        umask = _read_umask()
    finally:
        os.umask(old)
    assert umask == 0o027
    write_json(tmp_path / "a.json", {})
    with atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("x")
    for name in ("a.json", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~old, name


def test_seconds_since_start_counts_the_process():
    assert 0 < seconds_since_start() < 24 * 3600


def test_default_threads_leaves_busy_cores_and_masked_cores_alone():
    from nasdd.utils import default_threads

    assert default_threads(cpus={0, 1, 2, 3}, load=0.2) == 4
    assert default_threads(cpus={0, 1, 2, 3}, load=1.1) == 3  # one core kept busy by another process
    assert default_threads(cpus={0, 1}, load=9.0) == 1
    assert default_threads(cpus={5}, load=0.0) == 1


def test_the_cli_default_respects_the_affinity_mask():
    """A process pinned to one core (like `taskset -c 0`) trains with one torch thread on an idle machine;
    OMP_NUM_THREADS and --threads still win."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = (
        "import os, sys; from nasdd import cli, utils;"
        "cpus = sys.argv.pop(1); cpus != 'all' and os.sched_setaffinity(0, {int(cpus)});"
        "utils.os.getloadavg = lambda: (0.0, 0.0, 0.0);"  # an idle machine: only the mask limits
        "import nasdd.cli.catalog as c; c.command = lambda a: print(__import__('torch').get_num_threads());"
        "sys.exit(cli.main(['list', *sys.argv[1:]]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    def threads(cpus, *argv, **extra):
        run = subprocess.run([sys.executable, "-c", code, cpus, *argv], capture_output=True, text=True, cwd=root,
                             env={**env, **extra})  # fmt: skip
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split()[-1])

    assert threads("0") == 1
    assert threads("0", "--threads", "2") == 2
    if len(os.sched_getaffinity(0)) > 1:  # unpinned, the same idle machine uses more than one core
        assert threads("all") > 1 and threads("all", OMP_NUM_THREADS="1") == 1


def test_log_progress_prints_lines_with_eta(capsys):
    from nasdd.utils import LogProgress

    fast = LogProgress(total=20, desc="zero-cost", unit="job")  # a fast stage: one line, at the end
    for _ in range(20):
        fast.update(1)
    assert capsys.readouterr().err.splitlines() == ["zero-cost: 20/20 (100%) jobs, 0 s spent"]
    bar = LogProgress(total=20, desc="truth", unit="training", gap=0)
    for i in range(20):
        bar.set_postfix_str(f"arch {i}")
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("truth: 2/20 (10%) trainings, 0 s spent, ETA 0 s [arch 1]")
    assert lines[-1].startswith("truth: 20/20 (100%) trainings")
    assert list(LogProgress(range(3), desc="x")) == [0, 1, 2]
