"""No credential is written or printed: storage URLs are masked in configs, reports and error lines;
`NASDD_STORAGE` keeps the URL off the command line. (conftest's `_no_password_leaks` also checks every
file under each test's tmp_path and every captured output for the test password.)"""

import json
import os
from pathlib import Path

import pytest

from nasdd.cli import main
from nasdd.storage import from_env, hide, masked

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")


def search_args(proxy, out, study, *extra, trials=2):
    return ["search", "--space", TINY, "--proxy", str(proxy), "--dataset", "digits", "--study", study,
            "--trials", str(trials), "--recipe", "proxy,epochs=5", "--sampler", "random", "--quiet", "--threads", "1",
            "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


def test_masked_hides_only_the_password(test_password):
    url = f"postgresql+psycopg2://postgres:{test_password}@127.0.0.1:5432/nasdd"
    assert masked(url) == "postgresql+psycopg2://postgres:***@127.0.0.1:5432/nasdd"
    assert masked(f"mysql://u:{test_password}@x@db.example/nasdd") == "mysql://u:***@db.example/nasdd"  # raw '@'
    for plain in ("sqlite:////tmp/study.db", "journal:/tmp/a.log", "runs/a.log", "postgresql://u@h/d", None):
        assert masked(plain) == plain
    assert hide(f"lost {url}; retry") == f"lost {masked(url)}; retry"


def test_storage_from_the_environment_and_the_flag_wins(monkeypatch):
    monkeypatch.delenv("NASDD_STORAGE", raising=False)
    assert from_env(None) is None and from_env("journal:a.log") == "journal:a.log"
    monkeypatch.setenv("NASDD_STORAGE", "journal:env.log")
    assert from_env(None) == "journal:env.log" and from_env("journal:flag.log") == "journal:flag.log"


def test_nasdd_storage_is_used_by_search_and_the_flag_wins(proxy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NASDD_STORAGE", f"journal:{tmp_path / 'env.log'}")
    assert main(search_args(proxy, tmp_path / "a", "env")) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["storage"] == f"journal:{tmp_path / 'env.log'}" and (tmp_path / "env.log").exists()
    assert main(search_args(proxy, tmp_path / "b", "flag", "--storage", f"journal:{tmp_path / 'flag.log'}")) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["storage"] == f"journal:{tmp_path / 'flag.log'}"
    assert "flag" not in (tmp_path / "env.log").read_text()  # the flagged study went to the flag's storage only
    capsys.readouterr()


@pytest.mark.parametrize("driver", ["nodriver", "psycopg2"])
def test_storage_errors_print_the_url_masked(proxy, tmp_path, capsys, test_password, driver, monkeypatch):
    """A missing driver, or a server that is not there (port 1), is one line without the password, whether
    the URL comes from --storage or NASDD_STORAGE."""
    url = f"postgresql+{driver}://postgres:{test_password}@127.0.0.1:1/nasdd"
    assert main(search_args(proxy, tmp_path / "a", "s", "--storage", url)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open storage 'postgresql+" in err and "postgres:***@127.0.0.1:1" in err
    monkeypatch.setenv("NASDD_STORAGE", url)
    assert main(search_args(proxy, tmp_path / "b", "s")) == 2
    assert "postgres:***@127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.postgres
def test_search_validate_and_report_write_the_url_masked(proxy, tmp_path, postgres_url, test_password, capsys):
    assert test_password in postgres_url  # conftest gives every PostgreSQL URL the test password
    study = f"secrets-{os.getpid()}-{tmp_path.name[-6:]}"
    assert main(search_args(proxy, tmp_path / "search", study, "--storage", postgres_url, trials=4)) == 0
    config = json.loads((tmp_path / "search" / "config.json").read_text())
    assert config["storage"] == masked(postgres_url) and ":***@" in config["storage"]
    args = ["validate", "--dataset", "digits", "--space", TINY, "--study", study, "--peers", "params,random",
            "--ipc", "2", "--truth-seeds", "1", "--truth-recipe", "full,epochs=1", "--resamples", "20", "--quiet",
            "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "val")]  # fmt: skip
    os.environ["NASDD_STORAGE"] = postgres_url  # the password stays off the command line
    try:
        assert main(args) == 0
    finally:
        del os.environ["NASDD_STORAGE"]
    assert json.loads((tmp_path / "val" / "config.json").read_text())["storage"] == masked(postgres_url)
    assert main(["report", str(tmp_path / "val"), "--search", str(tmp_path / "search"), "--quiet"]) == 0
    captured = capsys.readouterr()  # conftest checks captured output and every file under tmp_path
    assert "Kendall" in (tmp_path / "val" / "report.md").read_text() or captured.out
