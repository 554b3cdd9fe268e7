import math
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest
import yaml

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.models import DEFAULT_ARCH
from nasdd.spaces import load_space, parse_space, space_names

CONDITIONAL = """
name: cond
family: convnet
params:
  depth: {choices: [1, 2, 3]}
  width_1: {choices: [8, 16]}
  width_2: {choices: [8, 16], when: {depth: [2, 3]}}
  width_3: {choices: [8, 16], when: {depth: [3]}}
  activation: {value: relu}
default: {depth: 2, width_1: 16, width_2: 8, activation: relu}
"""

RANGES = """
family: convnet
params:
  depth: {int: [1, 4]}
  width: {int: [8, 64], log: true}
  width_1: {int: [8, 32], step: 8}
  pooling: {choices: [avgpool, maxpool]}
"""


def _write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_spaces_and_sizes():
    assert space_names() == ["cell201", "convnet_cpu", "convnet_cpu_pooled", "convnet_dc"]
    sizes = {"convnet_dc": 720, "convnet_cpu": 405, "convnet_cpu_pooled": 270, "cell201": 15_625}
    for name, size in sizes.items():
        space = load_space(name)
        assert space.size == size
        keys = {spec.key() for spec in space.enumerate()}
        assert len(keys) == size  # every member distinct
        assert space.default_arch() in set(space.enumerate())


def test_convnet_dc_default_is_the_dc_convnet():
    space = load_space("convnet_dc")
    assert space.default_arch() == DEFAULT_ARCH
    assert space.factors() == ["depth", "width", "activation", "normalization", "pooling"]
    assert space.grid()["width"] == [32, 64, 128, 256]


def test_cell201_factors_are_the_six_edges():
    space = load_space("cell201")
    assert space.factors() == ["edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2"]
    assert space.default_arch()["channels"] == 8


def test_sample_is_seeded_and_inside_the_space():
    space = load_space("convnet_dc")
    members = set(space.enumerate())
    a = [space.sample(random.Random(7)) for _ in range(3)]
    b = [space.sample(random.Random(7)) for _ in range(3)]
    assert a == b
    draws = [space.sample(random.Random(s)) for s in range(50)]
    assert all(d in members for d in draws)
    assert len(set(draws)) > 40


def test_suggest_with_a_real_optuna_study():
    space = load_space("convnet_cpu")
    members = set(space.enumerate())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    study.optimize(lambda t: seen.append(space.suggest(t)) or 0.0, n_trials=5)
    assert all(s in members for s in seen)
    assert space.suggest(optuna.trial.FixedTrial(space.default.copy())) == space.default_arch()


def test_grid_sampler_visits_the_grid():
    text = "family: convnet\nparams:\n  depth: {choices: [1, 2]}\n  width: {choices: [8, 16]}\n"
    space = parse_space(yaml.safe_load(text))
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    seen = []
    study.optimize(lambda t: seen.append(space.suggest(t)) or 0.0)
    assert set(seen) == set(space.enumerate()) and len(seen) == 4


def test_conditional_parameters(tmp_path):
    space = load_space(_write(tmp_path, CONDITIONAL))
    members = list(space.enumerate())
    assert len(members) == 2 + 4 + 8  # depth 1: width_1; depth 2: width_1 x width_2; depth 3: all three
    assert all(("width_3" in dict(m.params)) == (m["depth"] == 3) for m in members)
    assert space.default_arch() == ArchSpec.make("convnet", depth=2, width_1=16, width_2=8, activation="relu")
    trial = optuna.trial.FixedTrial({"depth": 1, "width_1": 8, "width_2": 16})
    assert space.suggest(trial) == ArchSpec.make("convnet", depth=1, width_1=8, activation="relu")
    for seed in range(20):
        s = space.sample(random.Random(seed))
        assert s in members
    assert space.factors() == ["depth", "width_1", "width_2", "width_3"]


def test_ranges(tmp_path):
    space = load_space(_write(tmp_path, RANGES))
    assert space.finite and space.size == 4 * 57 * 4 * 2
    rng = random.Random(0)
    for _ in range(50):
        s = space.sample(rng)
        assert 1 <= s["depth"] <= 4 and 8 <= s["width"] <= 64 and s["width_1"] in (8, 16, 24, 32)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: space.suggest(t)["width"], n_trials=5)
    assert all(8 <= t.params["width"] <= 64 and t.params["width_1"] % 8 == 0 for t in study.trials)


def test_float_space_is_infinite(tmp_path, monkeypatch):
    from nasdd.models import FAMILIES

    # no shipped family takes a float parameter: let convnet's width accept one for this test only
    monkeypatch.setitem(FAMILIES.get("convnet").rules, "width", lambda v: None)
    text = "family: convnet\nparams:\n  depth: {choices: [1, 2]}\n  width: {float: [0.5, 2.0], log: true}\n"
    space = load_space(_write(tmp_path, text))
    assert not space.finite and space.size == math.inf
    assert 0.5 <= space.sample(random.Random(0))["width"] <= 2.0
    with pytest.raises(NasddError, match="cannot be enumerated"):
        next(space.enumerate())
    with pytest.raises(NasddError, match="grid sampler needs a finite"):
        space.grid()


BAD = [
    ("bogus: 1\nfamily: convnet\nparams: {depth: {choices: [1]}}", "key bogus: unknown key"),
    ("family: convnet\nparams: {depth: {choices: [1], colour: red}}", "key params.depth.colour: unknown key"),
    ("family: convnet\nparams: {depth: {choices: []}}", "key params.depth.choices: expected a non-empty list"),
    ("family: convnet\nparams: {depth: {choices: 3}}", "key params.depth.choices: expected a non-empty list"),
    ("family: convnet\nparams: {depth: {choices: [1, 1]}}", "key params.depth.choices: has repeated values"),
    (
        "family: cell201\nparams: {edge_1_0: {choices: [none, conv_5x5]}}",
        "key params.edge_1_0.choices.1.: invalid value 'conv_5x5'; expected one of none, skip_connect",
    ),
    ("family: convnet\nparams: {activation: {value: tanh}}", "key params.activation.value: invalid value 'tanh'"),
    ("family: convnet\nparams: {depth: {choices: ['3']}}", "choices.0.: invalid value '3'; expected a positive"),
    ("family: convnet\nparams: {depth: {int: [1, four]}}", "key params.depth.int: expected .low, high. of ints"),
    ("family: convnet\nparams: {depth: {int: [4, 1]}}", "key params.depth.int: expected 0 < low <= high"),
    ("family: convnet\nparams: {depth: {int: [1, 4], log: yes please}}", "key params.depth.log: expected a bool"),
    ("family: convnet\nparams: {depth: {choices: [1], int: [1, 2]}}", "key params.depth: expected exactly one of"),
    ("family: convnet\nparams: {depth: 3}", "key params.depth: expected a mapping"),
    ("family: convnet\nparams: {kernel: {choices: [3]}}", "key params.kernel: unknown parameter for this family"),
    (
        "family: convnet\nparams: {width: {choices: [8], when: {depth: [2]}}, depth: {choices: [2]}}",
        "key params.width.when.depth: refers to no earlier parameter",
    ),
    (
        "family: convnet\nparams: {depth: {choices: [2]}, width: {choices: [8], when: {depth: 2}}}",
        "key params.width.when.depth: expected a non-empty list",
    ),
    ("family: resnet\nparams: {depth: {choices: [2]}}", "key family: unknown family 'resnet'; expected one of"),
    ("params: {depth: {choices: [2]}}", "key family: missing"),
    ("family: convnet\nparams: []", "key params: expected a non-empty mapping"),
    ("family: convnet\nparams: {depth: {choices: [2]}}\ndefault: {depth: 9}", "key default.depth: invalid: 9"),
    ("- just\n- a list", "expected a mapping with keys"),
    ("family: convnet\nparams: {depth: {choices: [1, 2]\n", "malformed YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_yaml_names_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text, "bad_space.yaml")
    with pytest.raises(NasddError, match=message) as err:
        load_space(path)
    assert str(err.value).startswith(str(path))


def test_unknown_space_lists_valid_names():
    valid = "cell201, convnet_cpu, convnet_cpu_pooled, convnet_dc"
    with pytest.raises(NasddError, match=f"unknown search space 'convnet_xl'.*{valid}"):
        load_space("convnet_xl")


ROOT = Path(__file__).resolve().parent.parent
IN_WHEEL = """
import sys
from nasdd.spaces import SPACES_DIR, load_space, space_names
assert SPACES_DIR.is_relative_to(sys.argv[1]), SPACES_DIR
print(" ".join(f"{n}:{load_space(n).size}" for n in space_names()))
"""


def test_the_wheel_ships_every_module_and_space(tmp_path):
    """Build the wheel from a clean copy of the sources, install it by unpacking, load every space from it."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "nasdd", "search_spaces"):
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / item, src / item)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run([*build, str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("nasdd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "nasdd").rglob("*.py")}
    assert not modules - names, f"not in the wheel (list their packages in pyproject.toml): {modules - names}"
    yamls = sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert {f"nasdd/search_spaces/{n}.yaml" for n in yamls} <= names and "nasdd/catalog.json" in names
    tables = {str(p.relative_to(ROOT)) for p in (ROOT / "nasdd" / "validate").glob("truth_*.csv")}
    assert tables and tables <= names  # the truth tables `nasdd run` reads
    benchmarks = {str(p.relative_to(ROOT)) for p in (ROOT / "nasdd" / "validate" / "benchmarks").glob("*/*.csv")}
    assert len(benchmarks) >= 8 and benchmarks <= names  # the tables and cached scores `nasdd bench` reads
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-c", IN_WHEEL, str(site)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{n}:{load_space(n).size}" for n in yamls]
