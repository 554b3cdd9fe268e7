"""`nasdd run` end to end on digits with the tiny preset."""

import json

import pandas as pd
import pytest
from PIL import Image

from nasdd.cli import main
from nasdd.errors import NasddError
from nasdd.pipeline import PRESETS, RunConfig


def test_run_end_to_end_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--dataset", "digits", "--methods", "random", "--ipc", "2", "--preset", "tiny", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    listed = [
        "report.md",
        "report.html",
        "cost_vs_correlation.png",
        "proxy_vs_truth.png",
        "search_history.png",
        "proxy_random-ipc2.png",
        "run_config.json",
        "proxies/random-ipc2/proxy.pt",
        "search/trials.csv",
        "validate/summary.csv",
        "validate/per_arch.csv",
        "validate/config.json",
    ]
    for name in listed:
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
    summary = pd.read_csv(out / "validate" / "summary.csv")
    scored = summary[~summary["kind"].isin(["truth", "noise_ceiling"])]
    peers = PRESETS["tiny"].peers.split(",")
    # one row per proxy and per peer (random is the proxy itself; early has one row per budget)
    assert scored["name"].is_unique
    assert set(scored.loc[scored["kind"] == "proxy", "method"]) == {"random"}
    assert {p for p in peers if p not in ("random", "early")} <= set(scored["name"])
    assert (scored["kind"] == "peer:early").sum() >= 1
    assert (summary["kind"] == "noise_ceiling").sum() == 1
    assert "noise ceiling" in (out / "report.md").read_text()

    # a rerun resumes: nothing is distilled, searched or trained again, and the report is rewritten
    before = (out / "validate" / "summary.csv").read_text()
    assert main([*argv, "--quiet"]) == 0
    assert (out / "validate" / "summary.csv").read_text() == before

    # a rerun with other settings stops before any work, naming a real flag; the folder is untouched
    config = (out / "run_config.json").read_text()
    capsys.readouterr()
    assert main([*argv[:-1], str(out), "--ipc", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ipc: 2 there, 3 now" in err and "give another --out" in err
    assert (out / "run_config.json").read_text() == config and not (out / "proxies" / "random-ipc3").exists()


def test_unknown_preset_and_method_are_clear(tmp_path, capsys):
    assert main(["run", "--dataset", "digits", "--methods", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_a_folder_that_holds_something_else_is_refused(tmp_path, capsys, monkeypatch):
    import nasdd.pipeline as pipeline

    monkeypatch.setattr(pipeline, "make_proxies", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["run", "--dataset", "digits", "--methods", "random", "--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert "is not empty and holds no `nasdd run`; give another --out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_run_with_a_budget_searches_with_the_prescreen_strategy(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--dataset", "digits", "--methods", "random", "--ipc", "2", "--preset", "tiny", "--out", str(out)]
    assert main([*argv, "--quiet", "--budget", "8k"]) == 0
    budget = json.loads((out / "search" / "budget.json").read_text())
    assert budget["budget"] == 8000 and 0 < budget["spent"] <= 8000
    assert (out / "search" / "halving.csv").is_file() and (out / "search" / "winner.json").is_file()
    winner = json.loads((out / "search" / "winner.json").read_text())["arch"]
    assert winner in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"methods": ()}, "methods is empty"),
        ({"ipc": 0}, "`ipc` must be a positive integer, got 0"),
        ({"preset": "huge"}, "unknown preset 'huge'; valid presets: tiny, quick, standard"),
        ({"budget": 0}, "`budget` must be at least 1 sample-gradient, got 0"),
    ],
)
def test_a_bad_run_config_is_refused_in_one_line_naming_the_field(settings, message):
    with pytest.raises(NasddError, match=message) as err:
        RunConfig(**{"methods": ("random",), **settings})
    assert "\n" not in str(err.value)
