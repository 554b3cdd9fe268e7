import math

import pandas as pd
import pytest

from nasdd.arch import ArchSpec
from nasdd.cli import main
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe, TrainResult
from nasdd.validate import table as tt
from nasdd.validate import validate
from nasdd.validate.config import AuditConfig

POOL = [
    ArchSpec.make("convnet", depth=1, width=8, activation=act, normalization=norm, pooling="avgpool")
    for act, norm in [
        ("relu", "instancenorm"),
        ("sigmoid", "none"),
        ("leakyrelu", "batchnorm"),
        ("relu", "none"),
        ("sigmoid", "batchnorm"),
    ]
]
RECIPE = TrainRecipe.parse("full,epochs=1,batch_size=128")
FACTORS = ["activation", "normalization"]


def fake_train(arch: ArchSpec, seed: int) -> TrainResult:
    """A deterministic stand-in for a training (the table's bookkeeping is what is tested here)."""
    acc = 0.5 + 0.1 * POOL.index(arch) + 0.01 * seed
    return TrainResult(accuracy=acc, sample_grads=1000 + seed, seconds=1.5, params=10, flops_per_sample=20)


def new_table(digits) -> tt.TruthTable:
    return tt.TruthTable.new(dataset="digits", dataset_key=digits.key, space="convnet_cpu", recipe=RECIPE)


def test_a_table_round_trips(digits, tmp_path):
    path = tmp_path / "truth.csv"
    t = tt.build(new_table(digits), path, POOL, [0, 1], fake_train, factors=FACTORS)
    back = tt.TruthTable.load(path)
    assert back.meta == t.meta and back.recipe == RECIPE
    pd.testing.assert_frame_equal(back.accuracies(), t.accuracies(), check_exact=False)
    assert back.archs() == POOL
    df = pd.read_csv(path)
    assert {"arch_key", "params", "flops", "acc_s1", "sample_grads_s1", "acc_mean", "nasdd_version"} <= set(df)
    assert df.acc_mean.iloc[0] == pytest.approx(0.505)
    assert list(df.normalization[:2]) == ["instancenorm", "none"]
    assert back.training_grads() == 1000.5  # one truth training: the median over members x seeds 0, 1


def test_a_table_grows_without_retraining(digits, tmp_path):
    path = tmp_path / "truth.csv"
    tt.build(new_table(digits), path, POOL[:2], [0], fake_train)
    seen = []

    def counting(a, s):
        seen.append((POOL.index(a), s))
        return fake_train(a, s)

    tt.build(tt.TruthTable.load(path), path, POOL[:3], [0, 1], counting)
    assert seen == [(2, 0), (0, 1), (1, 1), (2, 1)]  # seed by seed, only the missing cells


def test_shards_merge_cell_by_cell(digits, tmp_path):
    parts = []
    for i in range(2):
        path = tmp_path / f"part{i}.csv"
        tt.build(new_table(digits), path, tt.shard(POOL, f"{i}/2"), [0, 1], fake_train)
        parts.append(tt.TruthTable.load(path))
    merged = tt.TruthTable.merge(parts)
    assert sorted(merged.frame.index) == sorted(a.key() for a in POOL)
    assert merged.accuracies().notna().all().all()
    with pytest.raises(NasddError, match="I/N"):
        tt.shard(POOL, "2/2")


def test_a_mismatched_table_is_refused(digits, tmp_path):
    path = tmp_path / "truth.csv"
    tt.build(new_table(digits), path, POOL, [0], fake_train)
    t = tt.TruthTable.load(path)
    with pytest.raises(NasddError, match="dataset_key"):
        t.check(dataset_key="mnist5k-0000000000")
    with pytest.raises(NasddError, match="space"):
        t.check(space="cell201")
    with pytest.raises(NasddError, match="recipe_key"):
        t.check(recipe_key=TrainRecipe.parse("full").key())
    other = tt.TruthTable.new(dataset="digits", dataset_key=digits.key, space="cell201", recipe=RECIPE)
    with pytest.raises(NasddError, match="space"):
        tt.TruthTable.merge([t, other])
    with pytest.raises(NasddError, match="truth table"):
        config = AuditConfig.from_text(truth_recipe="full,epochs=3", peers="params")
        validate(digits, POOL, (), config, truth_table=t, device="cpu")


def test_a_damaged_table_is_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(NasddError, match="not a truth table"):
        tt.TruthTable.load(bad)
    with pytest.raises(NasddError, match="does not exist"):
        tt.TruthTable.load(tmp_path / "missing.csv")


def test_a_partial_table_audits_the_members_it_holds(digits, tmp_path):
    path = tmp_path / "truth.csv"
    tt.build(new_table(digits), path, POOL[:4], [0, 1], fake_train)
    t = tt.TruthTable.load(path)
    res = validate(digits, POOL, (), AuditConfig(peers="params,flops", n_resamples=20), truth_table=t, device="cpu")
    assert len(res.per_arch) == 4 and res.config["truth_table"]["members_used"] == 4
    assert res.config["truth_table"]["pool_requested"] == 5
    truth_row = res.summary.set_index("name").loc["ground_truth"]
    assert truth_row.seeds == 2 and truth_row.cost_sample_grads == 4 * (1000 + 1001)
    assert res.per_arch.truth_mean.tolist() == pytest.approx([0.505, 0.605, 0.705, 0.805])
    ceiling = res.summary.set_index("name").loc["noise_ceiling"]
    assert math.isclose(ceiling.tau, 1.0)


def test_nasdd_truth_builds_and_validate_reads_it(digits, tmp_path, capsys):
    out = tmp_path / "t.csv"
    args = ["truth", "--dataset", "digits", "--space", "convnet_cpu_pooled", "--pool", "3", "--seeds", "1"]
    assert main([*args, "--recipe", "full,epochs=1,batch_size=256", "--out", str(out), "--quiet"]) == 0
    assert "3 architectures" in capsys.readouterr().out
    assert main([*args, "--recipe", "full,epochs=2", "--out", str(out), "--quiet"]) == 2
    assert "recipe_key" in capsys.readouterr().err
    audit = ["validate", "--dataset", "digits", "--truth-table", str(out), "--peers", "params"]
    assert main([*audit, "--out", str(tmp_path / "audit"), "--quiet"]) == 0
    assert "3 of 3 pool members held" in capsys.readouterr().out


def test_nasdd_run_finds_its_shipped_truth_table():
    from nasdd.data import load_dataset
    from nasdd.pipeline import PRESETS
    from nasdd.spaces import draw_pool, load_space

    quick = PRESETS["quick"]
    bundle, space = load_dataset("mnist5k"), load_space(quick.space)
    recipe = TrainRecipe.parse(quick.truth_recipe, TrainRecipe.parse("full"))
    pool = draw_pool(space, quick.pool, 0)
    table = tt.shipped(dataset_key=bundle.key, space=space.name, recipe=recipe, pool=pool)
    assert table is not None and table.accuracies().loc[[a.key() for a in pool]].notna().all().all()
    assert tt.shipped(dataset_key=bundle.key, space=space.name, recipe=RECIPE, pool=pool) is None  # other recipe
    assert tt.shipped(dataset_key=bundle.key, space=space.name, recipe=recipe, pool=draw_pool(space, 10, 7)) is None
