import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nasdd.errors import NasddError
from nasdd.validate import calibrate as cal
from nasdd.validate.scoring import ScoringRecipe
from nasdd.validate.table import SHIPPED, TruthTable


def _grid(n=30, seed=0):
    """A grid over 3 configurations whose config-1 tse column is the truth plus little noise."""
    rng = np.random.default_rng(seed)
    keys = [f"m{i:02d}" for i in range(n)]
    truth = pd.Series(rng.normal(size=n), index=keys)
    grid = cal.Grid("d", pd.DataFrame(index=keys), {}, {})
    cols = {}
    for c in range(3):
        for kind in ("val_acc", "tse"):
            r = ScoringRecipe(passes=c, score=kind)
            good = c == 1 and kind == "tse"
            cols[r.key()] = truth.to_numpy() + rng.normal(scale=0.1 if good else 3.0, size=n)
            grid.recipes[r.key()], grid.config[r.key()] = r, c
    grid.scores = pd.DataFrame(cols, index=keys)
    return grid, truth


def test_splits_are_disjoint_seeded_and_cover_the_pool():
    keys = [f"k{i}" for i in range(60)]
    a = cal.splits(keys, 10, 20, seed=3)
    assert a == cal.splits(keys, 10, 20, seed=3) and a != cal.splits(keys, 10, 20, seed=4)
    for c, e in a:
        assert len(c) == 10 and len(e) == 50 and not set(c) & set(e) and set(c) | set(e) == set(keys)
    with pytest.raises(NasddError, match="too few"):
        cal.splits(keys, 59, 1)


def test_calibration_finds_the_informative_recipe_from_calibration_members_only():
    grid, truth = _grid()
    cset = list(truth.index[:12])
    poisoned = grid.scores.copy()
    poisoned.loc[truth.index[12:]] = 0.0  # what the study may not read: changing it must not matter
    chosen = cal.calibrate(grid, truth, cset, n_trials=30, seed=0)
    other = cal.Grid("d", poisoned, grid.recipes, grid.config)
    assert cal.calibrate(other, truth, cset, n_trials=30, seed=0) == chosen
    assert grid.recipes[chosen].score == "tse" and grid.config[chosen] == 1


def test_stack_refuses_members_it_was_fitted_on_and_ranks_the_rest():
    grid, truth = _grid()
    factors = pd.DataFrame({f: "a" for f in cal.FACTORS}, index=truth.index)
    cset, ev = list(truth.index[:15]), list(truth.index[15:])
    st = cal.StackRanker(model="ridge").fit("d", grid.scores.loc[cset], factors, truth)
    with pytest.raises(NasddError, match="fitted on 1 of these members"):
        st.predict("d", grid.scores.loc[ev + cset[:1]], factors)
    pred = st.predict("d", grid.scores.loc[ev], factors)
    assert cal.stats.kendall_tau(truth.loc[ev].to_numpy(), pred.to_numpy()) > 0.5
    st.predict("other-dataset", grid.scores.loc[cset], factors)  # same arch keys, another dataset: allowed


def test_grid_recipes_share_the_overhead_and_keep_today_first():
    recipes, bn = cal.grid_recipes(1 / 30, 648000)
    assert (recipes[0].passes, recipes[0].lr, recipes[0].batch_size) == (0, 0.02, 128)
    assert bn == 1620 and recipes[0].curve_images == 405
    assert recipes[0].overhead_grads(bn) == pytest.approx(0.05 * 21600)
    assert len({r.training_key() for r in recipes}) == len(recipes)


def test_calibrate_help_documents_both_sources():
    out = subprocess.run([sys.executable, "-m", "nasdd", "calibrate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "transfer" in text and "fewshot" in text and "mnist5k" in text and "k full trainings" in text


def test_the_shipped_mnist5k_table_holds_the_benchmark_pool():
    table = TruthTable.load(SHIPPED / "truth_mnist5k_convnet_cpu_pooled_60.csv")
    assert table.meta["dataset"] == "mnist5k" and table.meta["space"] == "convnet_cpu_pooled"
    acc = table.accuracies()
    assert len(acc) == 60 and acc[0].notna().all()


@pytest.mark.slow
def test_calibrate_fewshot_end_to_end_writes_a_refusable_recipe(tmp_path):
    py = [sys.executable, "-m", "nasdd"]
    t = tmp_path / "t.csv"
    run = dict(capture_output=True, text=True)
    r = subprocess.run([*py, "truth", "--dataset", "digits", "--space", "convnet_cpu_pooled", "--pool", "6",
                        "--seeds", "1", "--recipe", "full,epochs=1", "--out", str(t), "--quiet"], **run)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = tmp_path / "recipe.json"
    r = subprocess.run([*py, "calibrate", "--dataset", "digits", "--space", "convnet_cpu_pooled", "--source",
                        "fewshot", "--table", str(t), "--k", "4", "--trials", "10", "--budget", "1/4",
                        "--out", str(out)], **run)  # fmt: skip
    assert r.returncode == 0, r.stderr
    recipe = ScoringRecipe.load(out)
    assert len(recipe.members) == 4 and recipe.space == "convnet_cpu_pooled"
    with pytest.raises(NasddError, match="calibrated for dataset"):
        recipe.check(space="convnet_cpu_pooled", dataset_key="mnist5k-fe2d3f8fc3")
    r = subprocess.run([*py, "calibrate", "--dataset", "digits", "--space", "convnet_cpu_pooled", "--source",
                        "fewshot", "--k", "4", "--out", str(out)], **run)  # fmt: skip
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "needs --table" in r.stderr


def test_run_refuses_a_recipe_for_another_dataset_before_training(tmp_path):
    recipe = tmp_path / "r.json"
    ScoringRecipe(space="convnet_cpu_pooled", dataset_key="fashion_mnist-1f5d0a7741").save(recipe)
    r = subprocess.run([sys.executable, "-m", "nasdd", "run", "--dataset", "digits", "--scoring", str(recipe),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode != 0 and "calibrated for dataset fashion_mnist-1f5d0a7741" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
