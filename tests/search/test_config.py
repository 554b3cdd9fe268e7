"""SearchConfig: every bad value refused once, in one line naming the field; the config round-trips through the
config.json a search writes (whose older keys stay)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.search.config import SearchConfig
from nasdd.search.study import search
from nasdd.train import TrainRecipe

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("trials", 0, "`trials` must be at least 1, got 0"),
        ("jobs", 0, "`jobs` must be at least 1, got 0"),
        ("budget", 0, "`budget` must be at least 1, got 0"),
        ("threads", -2, "`threads` must be at least 1, got -2"),
        ("heartbeat", 0, "`heartbeat` must be at least 1, got 0"),
        ("top", -1, "`top` and `retrain_top` must be >= 0, got -1 and 0"),
        ("retrain_top", -1, "`top` and `retrain_top` must be >= 0, got 5 and -1"),
        ("timeout", -1.0, "`timeout` must be > 0 seconds, got -1"),
        ("eta", 1, "`eta` must be at least 2, got 1"),
        ("budget_includes_distill", True, "`budget_includes_distill` needs a `budget`"),
        ("strategy", "prescreen", "the prescreen strategy needs a budget"),
        ("strategy", "halfing", "unknown strategy 'halfing'"),
        ("sampler", "anneal", "unknown sampler 'anneal'"),
        ("pruner", "never", "unknown pruner 'never'"),
        ("objective", "params", "unknown objective 'params'"),
        ("archs", (), "archs is empty"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_field(field, value, message):
    with pytest.raises(NasddError, match=message) as err:
        SearchConfig(study_name="s", **{field: value})
    assert "\n" not in str(err.value) and "--" not in str(err.value)


def test_text_is_parsed_once_and_bad_text_refused():
    c = SearchConfig.from_text(study_name="s", recipe="proxy,epochs=5", retrain_recipe="full,epochs=2", budget="3k")
    assert c.recipe == TrainRecipe.parse("proxy,epochs=5") and c.retrain_recipe.epochs == 2 and c.budget == 3000
    assert SearchConfig(study_name="s").target == 20 and c.target == float("inf")
    with pytest.raises(NasddError, match="unknown recipe key"):
        SearchConfig.from_text(study_name="s", recipe="proxy,epoch=5")
    with pytest.raises(NasddError, match="a budget is a number of sample-gradients"):
        SearchConfig.from_text(study_name="s", budget="lots")


def test_the_config_module_does_not_load_torch():
    code = "import sys, nasdd.search.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_config_round_trips_through_the_config_json_a_search_writes(digits, tmp_path):
    archs = (ArchSpec.make("convnet", depth=1, width=4),)
    assert SearchConfig.from_dict(SearchConfig(study_name="a", archs=archs).to_dict()).archs == archs
    config = SearchConfig.from_text(study_name="rt", trials=1, recipe="full,epochs=1", sampler="random", seed=3,
                                    retrain_recipe="full,epochs=1", budget="1M", top=2, threads=1)  # fmt: skip
    search(TINY, "full", digits, config, out=tmp_path, device="cpu", show_progress=False)
    written = json.loads((tmp_path / "config.json").read_text())
    assert SearchConfig.from_dict(written["search"]) == config
    # the keys older runs (and their readers) rely on are still written, with the same values
    assert written["study"] == "rt" and written["sampler"] == "random" and written["seed"] == 3
    assert written["trials"] == 1 and written["budget"]["total"] == 1_000_000 and written["threads"] == 1
    assert written["recipe"] == json.loads(json.dumps(written["search"]["recipe"]))


def test_a_scoring_recipe_round_trips_and_refuses_what_it_replaces():
    from nasdd.validate.scoring import ScoringRecipe

    recipe = ScoringRecipe(budget=0.1, passes=2, bn_images=50, score="tse", space="tiny", members=("a", "b"))
    config = SearchConfig(study_name="s", scoring=recipe, retrain_recipe=TrainRecipe.parse("full,epochs=2"))
    back = SearchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back.scoring.key() == recipe.key()
    for field, value, message in [
        ("pruner", "median", "`pruner` must be none, not 'median'"),
        ("strategy", "prescreen", "default `strategy`, not 'prescreen'"),
        ("recipe", TrainRecipe.parse("proxy"), "leave `recipe` out"),
    ]:
        with pytest.raises(NasddError, match=message) as err:
            SearchConfig(study_name="s", scoring=recipe, budget=10**6, **{field: value})
        assert "\n" not in str(err.value) and field in err.value.params
