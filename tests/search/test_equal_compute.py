"""The equal-compute search strategies (nasdd.search.equal_compute) on digits' learning curves."""

import pandas as pd
import pytest

from nasdd.search import equal_compute as ec
from nasdd.spaces import draw_pool, load_space
from nasdd.train import TrainRecipe
from nasdd.validate.curves import Curves

RECIPE = TrainRecipe(epochs=4, batch_size=128, lr=0.05, schedule="cosine")


@pytest.fixture(scope="module")
def space():
    return load_space("convnet_cpu_pooled")


@pytest.fixture(scope="module")
def members(space):
    return draw_pool(space, 5, seed=0)


def test_searches_stay_within_the_budget_and_score_regret(digits, space, members, tmp_path):
    keys = [m.key() for m in members]
    truth = pd.Series([0.90, 0.95, 0.80, 0.85, 0.70], index=keys)
    scores = pd.DataFrame({"proxy": [0.5, 0.9, 0.1, 0.8, 0.2], "snip": [1.0, 2.0, 3.0, 4.0, 5.0]}, index=keys)
    curves = Curves(tmp_path / "curves", tmp_path / "ckpt", digits, RECIPE)
    n = len(digits.y_train)
    costs = {
        "proxy-tpe": ec.StrategyCost("proxy", n // 10, n),
        "subset-tpe": ec.StrategyCost("proxy", n // 10),
        "zerocost-topk": ec.StrategyCost("snip", 64),
        "prescreen": ec.StrategyCost("snip", 64),
    }
    bench = ec.EqualCompute(space, members, curves, truth, scores, RECIPE.epochs, n, costs)
    for strategy in ec.STRATEGIES:
        for budget in (0.5, 2.5):
            row = ec.run(bench, strategy, budget, seed=0)
            assert row["spent_grads"] <= row["budget_grads"], (strategy, budget)
            if row["winner_key"]:
                assert row["regret"] == pytest.approx(0.95 - truth[row["winner_key"]], abs=1e-4)
    # 1.5 truth trainings: the proxy search pays distillation (1 epoch of 4), retrains
    # floor(0.9 * 1.25) = 1 candidate in full and scores members with the rest: its winner is the proxy's best
    row = ec.run(bench, "proxy-tpe", 1.5, seed=0)
    assert row["full_trainings"] == 1 and row["winner_key"] == keys[1] and row["regret"] == 0
    # the zero-cost prescreen's top 2 (snip 5.0 and 4.0) are trained; the one with the better val wins
    row = ec.run(bench, "zerocost-topk", 2.5, seed=0)
    assert row["full_trainings"] == 2 and row["winner_key"] in (keys[4], keys[3])
    # Hyperband with half a truth training (2 epochs) never trains anyone to the end
    row = ec.run(bench, "hyperband", 0.5, seed=0)
    assert row["full_trainings"] == 0 and row["spent_grads"] == 2 * n
    # the same seed repeats the same Hyperband search (its brackets hash the study name)
    again = [ec.run(bench, "hyperband", 2.5, seed=1) for _ in range(2)]
    assert again[0] == again[1]


def test_a_suggestion_maps_onto_the_nearest_member(space, members):
    nearest = ec.projector(space, members)
    for m in members:
        assert nearest(m) == m


class Flat:
    """A learning curve at 0.5 for every member and epoch."""

    def val(self, spec, epoch):
        return 0.5


def test_costs_come_from_the_ranking_benchmarks_rows():
    summary = pd.DataFrame({"budget": ["1/100", "1/100", "1/30"], "name": ["dm", "snip", "dm"],
                            "grads_per_candidate": [100.0, 64.0, 300.0],
                            "distill_sample_grads": [5000.0, float("nan"), 7000.0]})  # fmt: skip
    costs = ec.costs_from_rank(summary, "1/100", {"proxy-tpe": "dm", "zerocost-topk": "snip"})
    assert costs == {"proxy-tpe": ec.StrategyCost("dm@1/100", 100.0, 5000.0),
                     "zerocost-topk": ec.StrategyCost("snip@1/100", 64.0, 0.0)}  # fmt: skip


def test_a_search_seed_trains_with_one_truth_seed_and_is_scored_on_the_others(space, members):
    keys = [m.key() for m in members]
    accs = pd.DataFrame({"0": [0.9, 0.8, 0.7, 0.6, 0.5], "1": [0.8, 0.8, 0.8, 0.8, 0.8], "2": [0.1] * 5}, index=keys)
    by_seed = pd.DataFrame({"s0": [1.0, 2, 3, 4, 5], "s1": [5.0, 4, 3, 2, 1]}, index=keys)
    scores = pd.DataFrame({"snip": [0.0] * 5}, index=keys)
    costs = {"prescreen": ec.StrategyCost("snip", 1)}
    bench = ec.EqualCompute(space, members, Flat(), accs.mean(axis=1), scores, 4, 100, costs, accs, by_seed)
    seen, train_seed = ec.for_seed(bench, 4)
    assert train_seed == "1"
    assert seen.truth.tolist() == pytest.approx(accs[["0", "2"]].mean(axis=1).tolist())  # scored on the others
    assert seen.curves.val(members[0], 1) == pytest.approx(0.5 + 0.8 - 0.9)  # seed 1's curve: shifted
    assert seen.scores["snip"].tolist() == by_seed["s0"].tolist()  # scoring seed 4 mod 2
    assert ec.for_seed(ec.EqualCompute(space, members, Flat(), accs.mean(axis=1), scores, 4, 100, costs), 4)[1] == 0


def test_the_summary_and_verdict_leave_out_unfinished_replays():
    searches = [("prescreen", 0, 0.01, None), ("prescreen", 1, 0.03, None), ("hyperband", 0, 0.02, None),
                ("hyperband", 1, 0.9, "k epoch 3")]  # fmt: skip
    df = pd.DataFrame([{"budget_truths": 1.0, "strategy": s, "seed": seed, "budget_grads": 100, "spent_grads": 90,
                        "regret": r, "needs": n} for s, seed, r, n in searches])  # fmt: skip
    summary = ec.summarise(df).set_index("strategy")
    assert summary.loc["prescreen", "searches"] == 2 and summary.loc["hyperband", "searches"] == 1
    assert summary.loc["prescreen", "regret_mean"] == pytest.approx(0.02)
    assert summary.loc["hyperband", "spent_truths"] == pytest.approx(0.9)
    accs = pd.DataFrame({"0": [0.9, 0.8], "1": [0.9, 0.8]}, index=["a", "b"])
    text = ec.verdict(summary.reset_index(), accs, df)
    assert "1 searches needed an epoch" in text
    assert "- 1 T: prescreen 2.00 against best other hyperband 2.00: met." in text
