"""The bad-input matrix: every subcommand meets bad input with one line that says what is wrong and what
to do, exit code 2, no traceback (unless --debug) and no half-written output."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasdd import search as S
from nasdd.cli import main
from nasdd.data import load_dataset
from nasdd.distill import distill
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")
SEARCH0 = ["search", "--space", TINY, "--dataset", "digits", "--study", "s", "--trials", "2"]
SEARCH = [*SEARCH0, "--recipe", "proxy,epochs=2"]
SEARCH_P = [*SEARCH, "--proxy", "{proxy}"]
DISTILL = ["distill", "--dataset", "digits", "--method", "random"]
VALIDATE = ["validate", "--dataset", "digits", "--space", TINY, "--pool", "3", "--truth-recipe", "full,epochs=1"]
VALIDATE_P = [*VALIDATE, "--proxies", "{proxy}", "--peers", "params", "--truth-seeds", "1"]

EXPERTS = ["experts", "--dataset", "digits", "--buffer-root", "{tmp}/out"]
TRUTH = ["truth", "--dataset", "digits", "--space", TINY, "--out", "{tmp}/out/truth.csv"]

# (case id, argv with {placeholders}, fragment the one-line message must contain)
CASES = [
    (
        "unknown-dataset",
        ["distill", "--dataset", "nope", "--method", "random", "--ipc", "1"],
        "unknown dataset 'nope'; valid datasets: ",
    ),
    (
        "unknown-method",
        ["distill", "--dataset", "digits", "--method", "nope", "--ipc", "1"],
        "unknown method 'nope'; valid methods: ",
    ),
    ("ipc-zero", [*DISTILL, "--ipc", "0"], "ipc must be"),
    ("ipc-negative", [*DISTILL, "--ipc", "-3"], "ipc must be"),
    (
        "ipc-above-class-size",
        [*DISTILL, "--ipc", "100000"],
        "ipc 100000 exceeds the smallest class of digits (125 images); use --ipc 125 or less",
    ),
    ("distill-out-is-file", [*DISTILL, "--ipc", "1"], "is a file; choose another --out"),
    ("option-without-value", [*DISTILL, "--ipc", "1", "--option", "nokey"], "--option expects KEY=VALUE"),
    ("arch-bad-json", [*DISTILL, "--ipc", "1", "--arch", "{{bad"], "--arch is not valid ArchSpec JSON"),
    ("iterations-negative", [*DISTILL, "--ipc", "1", "--iterations", "-5"], "iterations must be >= 0"),
    (
        "unknown-space",
        ["search", "--space", "nope", "--dataset", "digits", "--study", "s", "--proxy", "{proxy}"],
        "unknown search space 'nope'",
    ),
    (
        "space-malformed-yaml",
        ["search", "--space", "{bad_yaml}", "--dataset", "digits", "--study", "s", "--proxy", "{proxy}"],
        "bad.yaml",
    ),
    (
        "space-inconsistent-yaml",
        ["search", "--space", "{odd_yaml}", "--dataset", "digits", "--study", "s", "--proxy", "{proxy}"],
        "odd.yaml",
    ),
    ("unknown-sampler", [*SEARCH_P, "--sampler", "nope"], "argument --sampler: invalid choice: 'nope'"),
    (
        "unknown-recipe",
        [*SEARCH0, "--recipe", "fastest", "--proxy", "{proxy}"],
        "unknown recipe 'fastest'; valid recipes",
    ),
    ("proxy-truncated", [*SEARCH, "--proxy", "{truncated}"], "is damaged: its checksum does not match"),
    ("proxy-bit-flipped", [*SEARCH, "--proxy", "{flipped}"], "is damaged: its checksum does not match"),
    ("proxy-sidecar-garbled", [*SEARCH, "--proxy", "{garbled}"], "proxy.json is damaged"),
    ("proxy-other-dataset-size", [*SEARCH, "--proxy", "{mnist_proxy}"], "proxy was made for mnist5k (1x28px"),
    ("proxy-other-channels", [*SEARCH, "--proxy", "{rgb_proxy}"], "(3x8px, 10 classes) but the dataset is digits"),
    ("proxy-other-classes", [*SEARCH, "--proxy", "{k5_proxy}"], "5 classes) but the dataset is digits"),
    ("proxy-not-a-folder", [*SEARCH, "--proxy", "{tmp}"], "is not a proxy folder"),
    ("storage-wrong-scheme", [*SEARCH_P, "--storage", "mysqlx://host/db"], "cannot open storage 'mysqlx://host/db'"),
    ("storage-no-scheme", [*SEARCH_P, "--storage", "somewhere"], "unknown storage 'somewhere'"),
    ("storage-unreachable", [*SEARCH_P, "--storage", "postgresql+psycopg2://u@127.0.0.1:9/db"], "cannot open storage"),
    (
        "study-with-other-space",
        ["search", "--space", "convnet_cpu", *SEARCH_P[3:], "--storage", "{study_db}"],
        "was made with other settings (space: 'tiny' -> 'convnet_cpu'",
    ),
    ("search-out-is-file", [*SEARCH_P, "--out", "{file}"], "is a file; choose another --out"),
    ("trials-negative", [*SEARCH_P, "--trials", "-4"], "--trials must be at least 1, got -4"),
    ("timeout-negative", [*SEARCH_P, "--timeout", "-1"], "timeout must be > 0"),
    ("heartbeat-zero", [*SEARCH_P, "--heartbeat", "0"], "--heartbeat must be at least 1, got 0"),
    (
        "lr-nan",
        [*SEARCH0, "--recipe", "proxy,lr=nan", "--proxy", "{proxy}"],
        "learning rate must be a positive finite number",
    ),
    (
        "lr-diverges",
        [*SEARCH0, "--recipe", "proxy,epochs=3,lr=1e12", "--proxy", "{proxy}"],
        "every trial failed (2; the",
    ),
    (
        "validate-unknown-peer",
        [*VALIDATE, "--proxies", "{proxy}", "--peers", "oracle"],
        "unknown peer 'oracle'; valid peers",
    ),
    (
        "validate-truncated-proxy",
        [*VALIDATE, "--proxies", "{truncated}", "--peers", "params"],
        "is damaged: its checksum",
    ),
    ("validate-storage-wrong-scheme", [*VALIDATE_P, "--storage", "mysqlx://host/db"], "cannot open storage"),
    (
        "validate-pool-negative",
        [*VALIDATE[:-4], "--pool", "-2", "--proxies", "{proxy}", "--peers", "params"],
        "--pool must be",
    ),
    ("validate-truth-seeds-zero", [*VALIDATE_P[:-2], "--truth-seeds", "0"], "--truth-seeds must be at least 1, got 0"),
    (
        "validate-budget-negative",
        [*VALIDATE_P, "--peers", "early", "--budgets", "-1"],
        "--budgets must be > 0 full-data epochs, got -1",
    ),
    (
        "validate-archs-malformed",
        [*VALIDATE[:-4], "--archs", "{bad_archs}", "--proxies", "{proxy}", "--peers", "params"],
        "bad.jsonl",
    ),
    ("validate-out-is-file", [*VALIDATE_P, "--out", "{file}"], "is a file; choose another --out"),
    ("report-missing-folder", ["report", "{tmp}/nothing"], "nothing"),
    (
        "report-unknown-format",
        ["report", "{tmp}", "--format", "pdf"],
        "unknown report format 'pdf'; valid formats: md, html",
    ),
    (
        "run-unknown-method",
        ["run", "--dataset", "digits", "--methods", "nope", "--preset", "tiny"],
        "unknown method 'nope'",
    ),
    (
        "run-ipc-zero",
        ["run", "--dataset", "digits", "--methods", "random", "--ipc", "0", "--preset", "tiny"],
        "ipc must be",
    ),
    (
        "run-out-is-file",
        ["run", "--dataset", "digits", "--methods", "random", "--preset", "tiny"],
        "is a file; choose another --out",
    ),
    ("experts-negative-count", [*EXPERTS, "--num-experts", "-1"], "num_experts and epochs must be >= 1, got -1"),
    ("experts-zero-epochs", [*EXPERTS, "--epochs", "0"], "num_experts and epochs must be >= 1, got 5 and 0"),
    ("experts-lr-nan", [*EXPERTS, "--recipe", "lr=nan"], "learning rate must be a positive finite number, got nan"),
    ("list-unknown-kind", ["list", "gadgets"], "argument what: invalid choice: 'gadgets'"),
    # library errors name a parameter; the command line shows the flag that set it
    (
        "validate-pool-too-big",
        [*VALIDATE[:-4], "--pool", "13", "--proxies", "{proxy}", "--peers", "params"],
        "--pool 13 exceeds the 12",
    ),
    ("validate-max-per-class-zero", [*VALIDATE_P, "--max-per-class", "0"], "--max-per-class must be a positive"),
    ("truth-archs-missing", [*TRUTH, "--archs", "{tmp}/none.jsonl"], "--archs file"),
    ("truth-shard-bad", [*TRUTH, "--pool", "3", "--shard", "2/2"], "--shard expects I/N with 0 <= I < N"),
]
NEEDS_OUT = {"distill", "run", "validate", "search"}  # the table gives these an --out in tmp_path


@pytest.fixture(scope="module")
def inputs(digits, tmp_path_factory):
    """Bad and good inputs, made once: proxies (good, damaged, for other data), YAML, a study, a file."""
    d = tmp_path_factory.mktemp("inputs")
    good = distill(digits, "random", ipc=2, seed=0)
    good.save(d / "proxy")
    for name in ("truncated", "flipped", "garbled"):
        shutil.copytree(d / "proxy", d / name)
    data = (d / "truncated" / "proxy.pt").read_bytes()
    (d / "truncated" / "proxy.pt").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x10
    (d / "flipped" / "proxy.pt").write_bytes(bytes(flipped))
    (d / "garbled" / "proxy.json").write_text('{"format": 1, "sha2')
    distill(load_dataset("mnist5k", max_per_class=5), "random", ipc=1, seed=0).save(d / "mnist_proxy")
    rgb = ProxySet(good.images.repeat(1, 3, 1, 1), good.labels, {**good.meta, "channels": 3}, dict(good.provenance))
    rgb.save(d / "rgb_proxy")
    k5 = ProxySet(good.images[good.labels < 5], good.labels[good.labels < 5], {**good.meta, "num_classes": 5})
    k5.save(d / "k5_proxy")
    (d / "bad.yaml").write_text("name: bad\nfamily: convnet\nparams:\n  depth: {choices: [1, 2]\n\twidth: 4\n")
    (d / "odd.yaml").write_text("name: odd\nfamily: convnet\nparams:\n  depth: {choices: []}\n  width: {value: 4}\n")
    (d / "bad.jsonl").write_text('{"family": "convnet", "depth": 1}\n{not json\n')
    (d / "file").write_text("a file, not a folder\n")
    db = f"sqlite:///{d / 'study.db'}"
    config = SearchConfig.from_text(study_name="s", trials=1, recipe="proxy,epochs=1", storage=db)
    S.search(TINY, d / "proxy", digits, config, out=d / "study_out", show_progress=False, device="cpu")
    return d


def fill(argv, inputs, tmp_path):
    paths = {p.name.replace(".yaml", "_yaml").replace(".", "_"): str(p) for p in inputs.iterdir()}
    paths.update(tmp=str(tmp_path), study_db=f"sqlite:///{inputs / 'study.db'}", bad_archs=str(inputs / "bad.jsonl"))
    paths.update(bad_yaml=str(inputs / "bad.yaml"), odd_yaml=str(inputs / "odd.yaml"), file=str(inputs / "file"))
    args = [a.format(**paths) for a in argv]
    if args[0] in NEEDS_OUT and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    return args


def run_main(args):
    try:
        return main([*args, "--quiet", "--device", "cpu"])
    except SystemExit as exc:  # argparse errors
        return exc.code


def temp_files(*folders):
    return [p for f in folders for p in Path(f).rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("case, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case, argv, fragment, inputs, tmp_path, capsys):
    before = sorted(p.name for p in inputs.rglob("*"))
    args = fill(argv, inputs, tmp_path)
    if case.endswith("out-is-file"):
        args[args.index("--out") + 1] = str(inputs / "file")
    code = run_main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"nasdd {args[0]}: error: ") and fragment in err, err
    assert not temp_files(inputs, tmp_path)  # nothing half-written
    if case != "lr-diverges":  # a finished search whose every trial failed still writes its tables
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), list(
            (tmp_path / "out").iterdir()
        )
    assert sorted(p.name for p in inputs.rglob("*")) == before


def test_table_is_wide():
    assert len(CASES) >= 25
    assert {argv[0] for _, argv, _ in CASES} >= {"distill", "search", "validate", "report", "run", "list", "experts"}


@pytest.mark.parametrize("case", ["proxy-bit-flipped", "unknown-sampler"])
def test_in_a_real_process_no_traceback(case, inputs, tmp_path):
    argv = next(a for c, a, _ in CASES if c == case)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "nasdd", *fill(argv, inputs, tmp_path), "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_debug_shows_the_traceback(inputs, tmp_path):
    with pytest.raises(NasddError, match="checksum does not match"):
        main(fill([*SEARCH, "--proxy", "{flipped}"], inputs, tmp_path) + ["--debug", "--quiet"])


def test_fixture_proxies_differ_as_intended(inputs):
    assert json.loads((inputs / "rgb_proxy" / "proxy.json").read_text())["meta"]["channels"] == 3
    assert torch.load(inputs / "k5_proxy" / "proxy.pt", weights_only=True)["labels"].max() == 4
