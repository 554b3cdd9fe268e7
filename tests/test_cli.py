import argparse
import subprocess
import sys

import pytest
import torch

import nasdd
from nasdd import cli
from nasdd.errors import NasddError


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
    for line in ("datasets:", "  mnist5k ", "imagefolder:PATH", "spaces:", "convnet_dc   convnet, 720 members"):
        assert line in out
    assert "cell201, 15,625 members" in out and "families:" in out and "methods:" in out
    assert cli.main(["list", "spaces"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "spaces:"


def test_user_errors_print_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("nasdd.ghost_stage", "a stage that is not built"))
    assert cli.main(["ghost"]) == 2
    err = capsys.readouterr().err
    assert err == "nasdd ghost: error: `nasdd ghost` is not available in this version yet\n"
    with pytest.raises(NasddError):
        cli.main(["ghost", "--debug"])


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
