"""`nasdd search` with a calibrated scoring recipe: every candidate trained by `train_member` on real training
images, its value the recipe's score, its cost within the recipe's budget of one retraining-recipe training."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from nasdd.arch import ArchSpec
from nasdd.cli import main
from nasdd.cost import TOLERANCE, training_grads
from nasdd.errors import NasddError
from nasdd.search.config import SearchConfig
from nasdd.search.study import search
from nasdd.train import TrainRecipe
from nasdd.validate.scoring import ScoringRecipe, score, spent_grads, train_member

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")  # 12 ConvNets, some with BatchNorm
TRUTH = "full,epochs=2,batch_size=64"
RECIPE = ScoringRecipe(budget=0.25, lr=0.05, batch_size=32, bn_images=60, space="tiny")


def run(digits, tmp_path, recipe=RECIPE, proxy="full", name="sc", **settings):
    settings = {"trials": 3, "sampler": "random", "retrain_recipe": TRUTH, **settings}
    config = SearchConfig.from_text(study_name=name, scoring=recipe, **settings)
    return search(TINY, proxy, digits, config, out=tmp_path / name, device="cpu", show_progress=False)


@pytest.mark.parametrize("kind", ["val_acc", "tse"])
def test_each_value_is_the_recipes_score_of_that_training_within_its_budget(digits, tmp_path, kind):
    recipe = replace(RECIPE, score=kind, dataset_key=digits.key)
    study = run(digits, tmp_path, recipe, objective="accuracy,params")
    truth_grads = training_grads(TrainRecipe.parse(TRUTH), len(digits.y_train))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        a = t.user_attrs
        if "cached_from" in a:
            continue
        rec = train_member(ArchSpec.from_json(a["arch"]), digits, recipe, 0, truth_grads=truth_grads,
                           bn_images=recipe.bn_images)  # fmt: skip
        assert t.values[0] == pytest.approx(score(rec, recipe), rel=1e-5) == a["score"]
        assert t.values[1] == a["params"] == rec["params"] and a["score_kind"] == kind
        assert a["sample_grads"] == spent_grads(rec) <= recipe.budget * truth_grads * (1 + TOLERANCE)
        assert a["recipe_key"] == recipe.key() and a["val_accuracy"] == rec["final_bn"]["acc"]
        assert (kind == "tse") == (t.values[0] < 0)  # minus a sum of losses: higher is better
    written = json.loads((tmp_path / "sc" / "config.json").read_text())
    assert SearchConfig.from_dict(written["search"]).scoring == recipe
    assert written["scoring"]["key"] == recipe.key() and written["scoring"]["truth_grads"] == truth_grads
    assert written["recipe"] is None and kind in written["proxy"]["scored_on"]
    top = pd.read_csv(tmp_path / "sc" / "top.csv")  # its value column is the score, not a val accuracy
    assert (
        "accuracy" not in top and top["score"].is_monotonic_decreasing and (top["score"] < 0).all() == (kind == "tse")
    )


def test_a_budget_counts_each_trial_at_the_recipes_share_of_a_truth_training(digits, tmp_path):
    truth_grads = training_grads(TrainRecipe.parse(TRUTH), len(digits.y_train))
    most = math.ceil(truth_grads / 4 * (1 + TOLERANCE))  # the matched recipe lands within TOLERANCE
    study = run(digits, tmp_path, sampler="grid", trials=None, budget=str(3 * most + 10))
    spent = json.loads((tmp_path / "sc" / "budget.json").read_text())
    assert spent["trial_cost"] == most and 0 < spent["spent_trials"] <= spent["budget"]
    assert len(study.trials) == 3  # room for 3 trials at (at most) 1/4 of a truth training each


def test_a_recipe_from_elsewhere_or_with_a_proxy_folder_is_refused_in_one_line(digits, proxy, tmp_path):
    for bad, message in [
        (replace(RECIPE, space="convnet_cpu"), "calibrated for space 'convnet_cpu', not 'tiny'"),
        (replace(RECIPE, dataset_key="mnist5k-0"), f"calibrated for dataset mnist5k-0, not {digits.key}"),
    ]:
        with pytest.raises(NasddError, match=message) as err:
            run(digits, tmp_path, bad)
        assert "\n" not in str(err.value)
    with pytest.raises(NasddError, match="trains candidates on real training images; use --proxy full"):
        run(digits, tmp_path, proxy=proxy)


def test_resuming_with_another_scoring_recipe_is_refused(digits, tmp_path):
    run(digits, tmp_path, trials=1)
    with pytest.raises(NasddError, match="other settings.*recipe_key"):
        run(digits, tmp_path, replace(RECIPE, lr=0.1), trials=2)
    with pytest.raises(NasddError, match="other settings.*recipe_key"):
        search(TINY, "full", digits, SearchConfig.from_text(study_name="sc", trials=2, recipe="full,epochs=1"),
               out=tmp_path / "sc", device="cpu", show_progress=False)  # fmt: skip
    assert len(run(digits, tmp_path, trials=2).trials) == 2  # the same recipe resumes


def test_cli_search_with_scoring_and_its_errors(digits, proxy, tmp_path, capsys):
    path = tmp_path / "recipe.json"
    RECIPE.save(path)
    base = ["search", "--space", TINY, "--dataset", "digits", "--trials", "2", "--quiet", "--device", "cpu"]
    base += ["--retrain-recipe", TRUTH]
    assert main([*base, "--study", "c", "--out", str(tmp_path / "c"), "--scoring", str(path)]) == 0
    text = capsys.readouterr().out
    assert "2 finished trials" in text and "score(val_acc)" in text and "value: the scoring recipe's val_acc" in text
    assert main([*base, "--study", "d", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip().endswith("--proxy is required: a proxy folder (from `nasdd distill`) "
                                                    "or `full` (or give --scoring)")  # fmt: skip
    for extra, message in [
        (["--pruner", "median"], "--pruner must be none"),
        (["--recipe", "full,epochs=1"], "leave --recipe out"),
        (["--proxy", str(proxy)], "use --proxy full"),
    ]:
        assert main([*base, "--study", "e", "--out", str(tmp_path / "e"), "--scoring", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    path.write_text("{not json")
    assert main([*base, "--study", "e", "--out", str(tmp_path / "e"), "--scoring", str(path)]) == 2
    assert "is not a scoring recipe file" in capsys.readouterr().err
