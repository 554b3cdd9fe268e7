import json

import pytest

from nasdd import cli


def test_distill_writes_a_proxy_and_evaluates(tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--preset", "quick"]
    argv += ["--option", "batch_real=8", "--iterations", "3", "--out", str(out), "--quiet"]
    assert cli.main([*argv, "--evaluate", "--eval-recipe", "epochs=3"]) == 0
    text = capsys.readouterr().out
    assert "dm: 10 images (1 per class)" in text and "sample-gradients" in text
    assert "dm: test accuracy" in text and "random: test accuracy" in text and "over 5 seeds" in text
    side = json.loads((out / "proxy.json").read_text())
    assert side["provenance"]["config"]["batch_real"] == 8 and side["provenance"]["config"]["iterations"] == 3
    assert (out / "grid.png").stat().st_size > 0 and not (out / "checkpoint.pt").exists()  # removed after success
    assert side["provenance"]["moved"] > 0  # how far the images moved from their initialisation


@pytest.mark.parametrize(
    "method,pair,value",
    [
        ("krr", "reg=1e-4", 1e-4),  # YAML reads 1e-4 as text; a float field takes it as a number
        ("krr", "reg=1", 1),  # an int is a float option's value as it was given (provenance unchanged)
        ("dm", "batch_real=8", 8),
        ("dm", "dsa_strategy=none", "none"),
        ("mtt", "expert_recipe=lr=0.1", "lr=0.1"),
        ("mtt", "zca=true", True),
        ("ratbptt", "width=none", None),
        ("ratbptt", "width=16", 16),
        ("ratbptt", "normalization=none", "none"),  # a string option keeps its text
        ("hcdc", "train_preset=null", None),
    ],
)
def test_option_strings_parse_to_the_fields_type(method, pair, value):
    from nasdd.cli.distill import parse_options
    from nasdd.distill import METHODS

    (parsed,) = parse_options([pair], METHODS.get(method).options_type).values()
    assert parsed == value and type(parsed) is type(value)


def test_an_option_of_the_wrong_type_exits_2_in_one_line(tmp_path, capsys):
    argv = ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--out", str(tmp_path)]
    assert cli.main([*argv, "--option", "batch_real=many"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method dm option batch_real must be int, got 'many'" in err


def test_keep_checkpoint_keeps_it(tmp_path):
    out = tmp_path / "p"
    argv = ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "2", "--quiet"]
    assert cli.main([*argv, "--option", "batch_real=8", "--out", str(out), "--keep-checkpoint"]) == 0
    assert (out / "checkpoint.pt").exists() and (out / "proxy.pt").exists()


def test_help_shows_defaults_and_preset_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset {" in text and "quick" in text and "(default: real)" in text and "(default: proxy)" in text


def test_unknown_method_lists_valid_ones_and_exits_2(tmp_path, capsys):
    code = cli.main(["distill", "--dataset", "digits", "--method", "magic", "--ipc", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown method 'magic'; valid methods:" in err and "dm" in err and "random" in err


def test_bad_option_and_arch_exit_2(tmp_path, capsys):
    base = ["distill", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", str(tmp_path)]
    assert cli.main([*base, "--option", "noequals"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli.main([*base, "--arch", "{bad"]) == 2
    assert "--arch" in capsys.readouterr().err


def test_list_methods_shows_family_and_paper(capsys):
    assert cli.main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "dm" in out and "Zhao & Bilen" in out and "CVPR 2022" in out and "herding" in out
