"""`nasdd.cost`: the sample-gradient cost model, the search budget (`--budget`, the retrain reserve, the
distillation, multi-fidelity rungs in epochs) and the candidate budget (matched recipes, amortisation)."""

import json
import math
import threading
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from nasdd import search as S
from nasdd.cli import main
from nasdd.cost import (
    SearchBudget,
    amortised,
    break_even,
    matched_recipe,
    parse_fraction,
    parse_grads,
    training_grads,
    trial_cost,
)
from nasdd.distill import distill
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.search.config import SearchConfig
from nasdd.storage import open_storage
from nasdd.train import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")  # 12 ConvNets
RECIPE = "proxy,epochs=5"
COST = 5 * 50  # one trial: 5 epochs over the 50-image proxy
PROXY = TrainRecipe.parse("proxy")
TRUTH = 12 * 54_000  # one Fashion-MNIST truth training of the ranking benchmark


def run(digits, proxy, tmp_path, out=None, **kw):
    config = SearchConfig.from_text(**{"study_name": "s", "recipe": RECIPE, "sampler": "grid", **kw})
    return S.search(TINY, proxy, digits, config, out=out or tmp_path / "out", device="cpu", show_progress=False)


def spent(study):
    return sum(t.user_attrs.get("sample_grads", 0) for t in study.get_trials() if S.is_counted(t))


def summary(tmp_path):
    return json.loads((tmp_path / "out" / "budget.json").read_text())


def test_grads_parse_with_k_m_g_and_bad_ones_are_refused():
    assert parse_grads("648000") == parse_grads("648k") == parse_grads(648_000) == 648_000
    assert parse_grads("3.2M") == 3_200_000 and parse_grads("1.5G") == 1_500_000_000
    for bad in ("3x", "0", "-5k", "1.5T", "", "k"):
        with pytest.raises(NasddError, match="budget"):
            parse_grads(bad)


def test_trial_cost_is_one_training_of_the_recipe():
    recipe = TrainRecipe.parse(RECIPE)
    assert trial_cost(recipe, 50) == training_grads(recipe, 50) == COST


def test_running_trials_count_at_full_cost_and_finished_ones_at_their_real_cost():
    budget = SearchBudget(total=1000, trial=COST)
    dist = {"x": IntDistribution(0, 1)}

    def trial(state, grads=None):
        attrs = {} if grads is None else {"sample_grads": grads}
        return create_trial(state=state, params={"x": 0}, distributions=dist, user_attrs=attrs,
                            value=0.5 if state == TrialState.COMPLETE else None)  # fmt: skip

    held = [trial(TrialState.COMPLETE, COST), trial(TrialState.PRUNED, 50), trial(TrialState.RUNNING)]
    assert budget.trials_spent(held) == COST + 50 + COST
    assert budget.room(held) == (1000 - 2 * COST - 50) // COST == 1
    assert budget.summary(held[:2])["spent_trials"] == COST + 50  # budget.json: the counted trials only


def test_budget_stops_the_study_within_one_trial_never_above(digits, proxy, tmp_path):
    study = run(digits, proxy, tmp_path, budget=4 * COST + 100)  # no --trials: only the budget stops it
    trained = [t for t in study.get_trials() if S.is_counted(t)]
    assert len(trained) == 4 and all(t.user_attrs["sample_grads"] == COST for t in trained)
    b = summary(tmp_path)
    assert b["spent_trials"] == spent(study) == 4 * COST and b["left"] == 100 and 0 <= b["left"] < COST
    assert json.loads((tmp_path / "out" / "config.json").read_text())["budget"]["total"] == 4 * COST + 100
    # resuming with the same budget starts nothing; --trials stays an upper bound under a large budget
    assert len(run(digits, proxy, tmp_path, budget=4 * COST + 100).trials) == 4
    assert len(run(digits, proxy, tmp_path, study_name="t", budget="1G", trials=3).trials) == 3


def test_pruned_trials_cost_less_so_more_fit_and_the_study_stays_within_budget(digits, proxy, tmp_path):
    budget = 6 * COST
    study = run(digits, proxy, tmp_path, budget=budget, pruner="sha", sampler="random")
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned and len([t for t in study.get_trials() if S.is_counted(t)]) > 6
    assert budget - COST < spent(study) <= budget and summary(tmp_path)["spent_trials"] == spent(study)


def test_retrain_top_k_is_reserved_and_its_real_cost_counted(digits, proxy, tmp_path):
    n = len(digits.y_train)
    reserve = 2 * n  # two trainings of full,epochs=1 on the training split
    kw = {"retrain_top": 2, "retrain_recipe": "full,epochs=1"}
    study = run(digits, proxy, tmp_path, budget=reserve + 3 * COST + 100, **kw)
    assert len([t for t in study.get_trials() if S.is_counted(t)]) == 3  # 3 trials, not 3 + 2n / COST
    b = summary(tmp_path)
    assert b["retrain_reserved"] == b["spent_retrain"] == reserve and b["spent_trials"] == 3 * COST
    assert b["spent"] == reserve + 3 * COST <= b["budget"] and b["left"] == 100
    with pytest.raises(NasddError, match=f"the minimum is {COST + reserve}$") as err:
        run(digits, proxy, tmp_path, study_name="small", budget=COST + reserve - 1, **kw)
    assert "\n" not in str(err.value)


def test_a_budget_smaller_than_one_trial_is_refused_with_one_line(digits, proxy, tmp_path):
    with pytest.raises(NasddError, match=f"less than one trial .*; the minimum is {COST}$") as err:
        run(digits, proxy, tmp_path, budget=COST - 1)
    assert "\n" not in str(err.value)
    with pytest.raises(NasddError, match="`budget_includes_distill` needs a `budget`"):
        run(digits, proxy, tmp_path, budget_includes_distill=True)


def test_distillation_counts_when_asked(digits, tmp_path):
    base = distill(digits, "random", ipc=5, seed=0)
    p = ProxySet(base.images, base.labels, base.meta, {**base.provenance, "cost": {"sample_grads": 1000}})
    with pytest.raises(NasddError, match=f"distillation \\(1,000\\); the minimum is {COST + 1000}$"):
        run(digits, p, tmp_path, budget=COST + 999, budget_includes_distill=True)
    study = run(digits, p, tmp_path, budget=1000 + 2 * COST, budget_includes_distill=True)
    assert spent(study) == 2 * COST and summary(tmp_path)["distill_counted"] == 1000


@pytest.mark.parametrize("pruner", ["hyperband", "sha"])
def test_multi_fidelity_rungs_are_epochs_of_real_data(digits, tmp_path, pruner):
    n = 200  # a real-data subset stands for the full training split
    p = distill(digits, "random", ipc=20, seed=0)
    assert len(p.labels) == n
    study = run(digits, p, tmp_path, recipe="proxy,epochs=9", pruner=pruner, sampler="random", trials=8)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eval_every"] == 1 and study.pruner._min_resource == 1
    assert pruner == "sha" or study.pruner._max_resource == 9  # Hyperband: from 1 epoch to the recipe's 9
    trained = [t for t in study.get_trials() if S.is_counted(t) and "cached_from" not in t.user_attrs]
    for t in trained:  # one report per epoch, keyed by the epoch number (the last epoch is the final value)
        last = t.user_attrs.get("pruned_at", 8)
        assert sorted(t.intermediate_values) == list(range(1, last + 1))
    pruned = [t for t in trained if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    assert all(t.user_attrs["sample_grads"] == t.user_attrs["pruned_at"] * n for t in pruned)


def test_pruned_cost_is_exact_for_step_recipes(digits, tmp_path):
    p = distill(digits, "random", ipc=20, seed=0)  # 200 images, batches of 64: the 4th of each epoch has 8
    study = run(digits, p, tmp_path, recipe="proxy,steps=40,batch_size=64", pruner="sha", sampler="random", trials=6)
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned
    for t in pruned:
        steps = t.user_attrs["pruned_at"]
        assert t.user_attrs["sample_grads"] == (steps // 4) * 200 + (steps % 4) * 64


def test_two_workers_together_stay_within_the_budget(digits, proxy, tmp_path):
    budget = 5 * COST + 100
    study = run(digits, proxy, tmp_path, budget=budget, jobs=2)
    assert spent(study) == 5 * COST and not study.get_trials(states=(TrialState.RUNNING,))
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    open_storage(url)  # the schema first: two workers creating a fresh SQLite file at once can collide on it
    errors = []

    def worker(i):
        try:
            run(digits, proxy, tmp_path, study_name="w", storage=url, budget=budget, out=tmp_path / f"w{i}", seed=i,
                heartbeat=1)  # polls the other worker every second
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    shared = optuna.load_study(study_name="w", storage=url)
    assert budget - COST < spent(shared) <= budget


def test_cli_accepts_a_budget_with_a_suffix(proxy, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["search", "--space", TINY, "--proxy", str(proxy), "--dataset", "digits", "--study", "c", "--trials", "2"]
    argv += ["--out", str(out), "--quiet", "--device", "cpu", "--recipe", RECIPE]
    assert main([*argv, "--budget", "648k"]) == 0
    assert json.loads((out / "budget.json").read_text())["budget"] == 648_000
    assert "budget 648,000 sample-gradients" in capsys.readouterr().out
    assert main([*argv, "--budget", "3x"]) == 2
    err = capsys.readouterr().err
    assert "648k" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("frac", [1 / 10, 1 / 30, 1 / 100, 1 / 300])
@pytest.mark.parametrize("n", [10, 100, 500, 54_000])
def test_every_matched_recipe_lands_within_five_percent(frac, n):
    grads = frac * TRUTH
    recipe = matched_recipe(PROXY, n, grads)
    assert abs(training_grads(recipe, n) - grads) <= 0.05 * grads
    assert recipe.lr == PROXY.lr and recipe.schedule == PROXY.schedule


def test_training_grads_counts_like_the_trainer(digits):
    from nasdd.arch import ArchSpec
    from nasdd.train import train_arch

    spec = ArchSpec.make("convnet", depth=1, width=8, activation="relu", normalization="none", pooling="avgpool")
    recipe = matched_recipe(PROXY, 300, 1000)
    r = train_arch(spec, digits.x_train[:300], digits.y_train[:300], recipe, num_classes=10, device="cpu")
    assert r.sample_grads == training_grads(recipe, 300)


def test_fractions_parse_and_bad_ones_are_refused():
    assert parse_fraction("1/30") == pytest.approx(1 / 30) and parse_fraction("0.01") == 0.01
    for bad in ("0", "2", "x", "1/0"):
        with pytest.raises(NasddError, match="budget"):
            parse_fraction(bad)


def test_break_even_and_amortised_cost():
    assert amortised(100, 10_000, 100) == 200
    assert break_even(100, 10_000, 1100) == 11  # 11 candidates save 11,000 > 10,000
    assert break_even(2000, 10_000, 1000) == math.inf
