"""AuditConfig: every bad value refused once, in one line naming the field; the config round-trips through the
config.json an audit writes (whose older keys stay)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe
from nasdd.validate import validate
from nasdd.validate.config import AuditConfig
from nasdd.validate.scoring import ScoringRecipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("truth_seeds", 0, "`truth_seeds` must be at least 1, got 0"),
        ("proxy_seeds", 0, "`proxy_seeds` must be at least 1, got 0"),
        ("n_resamples", 0, "`n_resamples` must be at least 1, got 0"),
        ("zc_batch", 0, "`zc_batch` must be at least 1, got 0"),
        ("ipc", 0, "`ipc` must be at least 1, got 0"),
        ("early_epochs", (0.5, -1.0), "`early_epochs` must be > 0 full-data epochs, got -1"),
        ("proxy_epochs", (10, 0), r"`proxy_epochs` must be at least 1 each, got \[10, 0\]"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_field(field, value, message):
    with pytest.raises(NasddError, match=message) as err:
        AuditConfig(**{field: value})
    assert "\n" not in str(err.value) and "--" not in str(err.value)


def test_recipes_are_parsed_once_over_their_presets():
    c = AuditConfig.from_text(truth_recipe="epochs=3", proxy_recipe="epochs=7", early_epochs=[], proxy_epochs=[5])
    assert c.truth_recipe == TrainRecipe.parse("full,epochs=3")
    assert c.proxy_recipe == TrainRecipe.parse("proxy,epochs=7")
    assert c.early_epochs is None and c.proxy_epochs == (5,)  # an empty sweep is none; lists become tuples
    with pytest.raises(NasddError, match="unknown recipe"):
        AuditConfig.from_text(truth_recipe="fastest")


def test_the_config_module_does_not_load_torch():
    code = "import sys, nasdd.validate.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_config_round_trips_through_the_config_json_an_audit_writes(digits, tmp_path):
    pool = [ArchSpec.make("convnet", depth=1, width=8, activation=a, normalization="none", pooling="avgpool")
            for a in ("relu", "sigmoid", "leakyrelu")]  # fmt: skip
    scoring = ScoringRecipe(budget=0.5, passes=2, batch_size=32, score="tse")
    config = AuditConfig.from_text(peers="params", truth_seeds=1, truth_recipe="epochs=1,batch_size=128",
                                   n_resamples=10, proxy_epochs=[1, 2], scoring=scoring)  # fmt: skip
    assert AuditConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    validate(digits, pool, (), config, out=tmp_path, device="cpu")
    written = json.loads((tmp_path / "config.json").read_text())
    assert AuditConfig.from_dict(written["audit"]) == config
    # the keys older runs (and their readers) rely on are still written, with the same values
    assert written["peers"] == ["params"] and written["truth_seeds"] == 1 and written["proxy_seeds"] == 1
    assert written["truth_recipe"] == written["audit"]["truth_recipe"] and written["statistics"]["n_resamples"] == 10
    assert written["storage"].endswith("results.db") and written["audit"]["storage"] is None
