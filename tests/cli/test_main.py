import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nasdd
from nasdd import cli
from nasdd.errors import NasddError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sub", list(cli.SUBCOMMANDS))
def test_every_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([sub, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nasdd {sub}")
    assert all(opt in out for opt in ("--device", "--quiet", "--debug", "--threads"))


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"nasdd {nasdd.__version__}"


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for line in ("datasets:", "  mnist5k ", "imagefolder:PATH", "spaces:"):
        assert line in out
    assert re.search(r"convnet_dc +convnet, 720 members", out)
    assert "cell201, 15,625 members" in out and "families:" in out and "methods:" in out
    assert "pruners:" in out and "  hyperband " in out
    assert cli.main(["list", "spaces"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "spaces:"


def test_user_errors_print_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("nasdd.ghost_stage", "a stage that is not built"))
    assert cli.main(["ghost"]) == 2
    err = capsys.readouterr().err
    assert err == "nasdd ghost: error: `nasdd ghost` is not available in this version yet\n"
    with pytest.raises(NasddError):
        cli.main(["ghost", "--debug"])


def test_a_parameter_named_by_an_error_reads_as_its_flag(monkeypatch, capsys):
    """The library names its parameters (`max_per_class`); the command line shows the flags that set them."""
    import pickle
    import types

    err = NasddError("`max_per_class` must be >= 1 and `colour` one of red, blue", params=("max_per_class", "colour"))
    assert pickle.loads(pickle.dumps(err)).params == err.params  # e.g. raised in a worker process

    def fail(args):
        raise err

    stage = types.SimpleNamespace(add_arguments=cli.add_data_args, command=fail)
    real = cli.importlib.import_module
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("nasdd.ghost_stage", "a stage that fails"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda n: stage if n == "nasdd.ghost_stage" else real(n))
    assert cli.main(["ghost"]) == 2
    assert capsys.readouterr().err == "nasdd ghost: error: --max-per-class must be >= 1 and `colour` one of red, blue\n"


def test_threads_option():
    before = torch.get_num_threads()
    try:
        assert cli.main(["list", "families", "--threads", "1", "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_data_args():
    parser = argparse.ArgumentParser()
    cli.add_data_args(parser)
    args = parser.parse_args(["--dataset", "digits", "--max-per-class", "50"])
    bundle = cli.load_data_from_args(args)
    assert bundle.name == "digits" and len(bundle.y_train) + len(bundle.y_val) == 500
    assert parser.parse_args([]).dataset == "mnist5k"
    with pytest.raises(NasddError, match="unknown dataset 'digitz'"):
        cli.load_data_from_args(parser.parse_args(["--dataset", "digitz"]))


def test_console_entry_point_runs():
    """`python -m nasdd` (what the `nasdd` script runs) works in a fresh process."""
    ok = subprocess.run([sys.executable, "-m", "nasdd", "list", "families"], capture_output=True, text=True)
    assert ok.returncode == 0 and "convnet" in ok.stdout, ok.stderr


HEAVY = ("torch", "matplotlib.pyplot", "pandas", "scipy.stats", "optuna")
PROBE = """
import sys
from nasdd.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["list"],
        ["list", "spaces"],
        ["run", "--help"],
        ["validate", "--help"],
        ["bench", "--help"],
        ["truth", "--help"],
        ["calibrate", "--help"],
        ["import-proxy", "--help"],
        ["experts", "--help"],
        ["report", "--help"],
    ],
)
def test_start_up_imports_no_torch(argv):
    """`--help`, `--version` and `nasdd list` start without torch; a subcommand's --help imports only it."""
    code = PROBE.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    heavy = done.stdout.rsplit("HEAVY=", 1)[1].strip()
    if argv[0] == "run":
        assert "matplotlib.pyplot" not in heavy and "optuna" not in heavy, heavy  # report/search load when used
    elif argv[0] in ("validate", "bench"):
        assert "torch" not in heavy, heavy  # its options need the statistics' defaults, not the trainer
    else:
        assert heavy == "", f"{argv} imported {heavy}"


def test_torch_free_choices_equal_the_registries():
    """The subcommand modules list some registries' names without importing them; the lists stay equal."""
    from nasdd.cli.import_proxy import FORMAT_NAMES
    from nasdd.distill.importers import FORMATS

    assert tuple(FORMATS.names()) == FORMAT_NAMES


def test_list_snapshot_is_current():
    """nasdd/catalog.json equals what the registries say; if not, refresh it: `python -m nasdd.catalog`."""
    from nasdd import catalog

    snap = catalog._load_snapshot()
    assert snap is not None, "nasdd/catalog.json is stale (module files changed): run `python -m nasdd.catalog`"
    assert snap == json.loads(json.dumps(catalog.take_snapshot())), "run `python -m nasdd.catalog`"


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["run", "--help"]) == 130
    assert capsys.readouterr().err == "nasdd run: interrupted\n"


def test_ctrl_c_in_a_real_process_exits_130():
    """SIGINT while a fresh process imports the validate stage (torch, scipy): one line, exit code 130."""
    code = "import sys; print('ready', flush=True); from nasdd.cli import main; sys.exit(main(['validate', '--help']))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the process finished before the signal")
    assert proc.returncode == 130 and err.decode() == "nasdd validate: interrupted\n", (proc.returncode, err)


def test_every_option_shows_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--seed SEED seed of every stage", "(default: 0)", "~/.cache/nasdd/data", "runs/run-<time>"):
        assert shown in text


@pytest.mark.parametrize("sub", ["validate", "search"])
def test_a_failed_command_leaves_no_empty_folder(sub, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    argv = {
        "validate": ["validate", "--dataset", "digits"],  # no pool given: fails after making --out
        "search": ["search", "--dataset", "digits", "--space", "convnet_cpu", "--study", "s",
                   "--proxy", str(tmp_path / "missing")],
    }[sub]  # fmt: skip
    assert cli.main([*argv, "--out", str(out), "--device", "cpu"]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cli.main([*argv, "--out", str(kept), "--device", "cpu"]) == 2
    assert kept.is_dir()  # a folder that was there before stays


def test_an_interrupted_stage_says_what_it_saved_and_how_to_resume(monkeypatch, capsys):
    import types

    def stopped(args):
        raise KeyboardInterrupt("dm stopped after iteration 7 of 60; its images are saved in o/checkpoint.pt")

    stage = types.SimpleNamespace(add_arguments=lambda p: p.add_argument("--out"), command=stopped)
    real = cli.importlib.import_module
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("nasdd.ghost_stage", "a stage that saves on Ctrl-C"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda n: stage if n == "nasdd.ghost_stage" else real(n))
    assert cli.main(["ghost", "--out", "my dir"]) == 130
    assert capsys.readouterr().err == (
        "nasdd ghost: interrupted: dm stopped after iteration 7 of 60; its images are saved in o/checkpoint.pt; "
        "to resume, rerun: nasdd ghost --out 'my dir'\n"
    )
