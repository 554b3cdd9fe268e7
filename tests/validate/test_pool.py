import json

import optuna
import pytest

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.spaces import load_space, parse_space
from nasdd.validate.pool import draw_pool, factor_counts, read_archs, study_pool, write_archs


@pytest.mark.parametrize("name,n", [("convnet_cpu", 30), ("convnet_dc", 24), ("cell201", 20)])
def test_pool_is_reproducible_distinct_and_balanced(name, n):
    space = load_space(name)
    pool = draw_pool(space, n, seed=3)
    assert pool == draw_pool(space, n, seed=3)
    assert pool != draw_pool(space, n, seed=4)
    assert len(set(pool)) == n
    for factor, counts in factor_counts(pool, space).items():
        options = next(p for p in space.params if p.name == factor).options()
        assert set(counts) == set(options) or len(counts) == n, factor  # every value appears
        assert max(counts.values()) - min(counts.values()) <= 1, (factor, counts)


def test_pool_with_conditions_and_ranges():
    space = parse_space(
        {
            "family": "convnet",
            "params": {
                "depth": {"choices": [1, 2]},
                "width": {"int": [8, 64], "log": True},
                "width_2": {"choices": [8, 16], "when": {"depth": [2]}},
            },
        }
    )
    pool = draw_pool(space, 10, seed=0)
    assert len(set(pool)) == 10
    for a in pool:
        assert 8 <= a["width"] <= 64
        assert (a.get("width_2") is not None) == (a["depth"] == 2)
    assert sorted(factor_counts(pool, space)["depth"].values()) == [5, 5]


def test_pool_errors():
    space = load_space("convnet_cpu")
    with pytest.raises(NasddError, match="exceeds"):
        draw_pool(space, 1000)
    with pytest.raises(NasddError, match="positive"):
        draw_pool(space, 0)


def test_archs_file_roundtrip_and_errors(tmp_path):
    pool = draw_pool(load_space("convnet_cpu"), 5)
    write_archs(tmp_path / "a.jsonl", pool)
    assert read_archs(tmp_path / "a.jsonl") == pool
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"family": "convnet", "depth": 1}\n{oops\n')
    with pytest.raises(NasddError, match="bad.jsonl:2"):
        read_archs(bad)
    with pytest.raises(NasddError, match="does not exist"):
        read_archs(tmp_path / "missing.jsonl")


def test_study_pool_replays_trials(tmp_path):
    space = load_space("convnet_cpu")
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: space.suggest(t)["width"], n_trials=6)
    with_attr = ArchSpec.make("convnet", depth=1, width=8)
    t = study.ask()
    t.set_user_attr("arch", with_attr.to_json())
    study.tell(t, 1.0)
    pool = study_pool("s", url, space)
    expected = [space.suggest(optuna.trial.FixedTrial(tr.params)) for tr in study.trials[:6]]
    assert pool == list(dict.fromkeys(expected + [with_attr]))
    assert json.loads(pool[0].to_json())["family"] == "convnet"
    with pytest.raises(NasddError, match="no study"):
        study_pool("nope", url, space)
