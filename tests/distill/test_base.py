import math

import pytest
import torch

from nasdd.distill import METHODS, Saving, distill
from nasdd.distill.base import CHECKPOINT
from nasdd.distill.dm import DistributionMatching
from nasdd.distill.gm import GradientMatching
from nasdd.errors import NasddError

QUICK = {"iterations": 6, "batch_real": 16}


class Interrupted(DistributionMatching):
    def step(self, it: int) -> float:
        if it == 5:
            raise KeyboardInterrupt
        return super().step(it)


class Diverges(DistributionMatching):
    def step(self, it: int) -> float:
        loss = super().step(it)
        if it == 3:
            with torch.no_grad():
                self.images[0, 0, 0, 0] = math.nan
        return loss


def test_resume_after_interruption_equals_an_uninterrupted_run(digits, tmp_path):
    whole = distill(digits, "dm", 2, seed=4, **QUICK)
    with pytest.raises(KeyboardInterrupt):
        Interrupted(ipc=2, seed=4, **QUICK).run(digits, saving=Saving(out=tmp_path, checkpoint_every=2))
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["iteration"] == 4
    resumed = distill(digits, "dm", 2, seed=4, saving=Saving(out=tmp_path, resume=True, checkpoint_every=2), **QUICK)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.provenance["cost"]["sample_grads"] == whole.provenance["cost"]["sample_grads"]
    assert (tmp_path / "proxy.pt").exists() and (tmp_path / "grid.png").exists()


def test_resume_refuses_another_configuration(digits, tmp_path):
    distill(digits, "dm", 1, seed=0, saving=Saving(out=tmp_path, keep_checkpoint=True, checkpoint_every=2), **QUICK)
    with pytest.raises(NasddError, match="already holds a proxy"):  # a finished proxy is never replaced silently
        distill(digits, "dm", 1, seed=1, saving=Saving(out=tmp_path, resume=True, checkpoint_every=2), **QUICK)
    (tmp_path / "proxy.json").unlink()
    with pytest.raises(NasddError, match="another configuration"):
        distill(digits, "dm", 1, seed=1, saving=Saving(out=tmp_path, resume=True, checkpoint_every=2), **QUICK)


def test_nan_stops_with_a_message_and_keeps_the_last_good_images(digits, tmp_path):
    with pytest.raises(NasddError, match=r"dm diverged at iteration 3 .*last good images are kept"):
        Diverges(ipc=1, seed=2, **QUICK).run(digits, saving=Saving(out=tmp_path, checkpoint_every=2))
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    good = distill(digits, "dm", 1, seed=2, **{**QUICK, "iterations": 3})
    assert state["iteration"] == 3 and torch.equal(state["images"], good.images)


@pytest.mark.parametrize("ipc", [0, -1, 10_000])
def test_bad_ipc_is_refused(digits, ipc):
    with pytest.raises(NasddError, match="ipc"):
        distill(digits, "random", ipc)


def test_unknown_option_preset_and_method_are_refused(digits):
    with pytest.raises(NasddError, match="no option 'bogus'; valid options: batch_real"):
        distill(digits, "dm", 1, bogus=1)
    with pytest.raises(NasddError, match="no preset 'fast'; valid presets: quick, cpu"):
        distill(digits, "dm", 1, preset="fast")
    with pytest.raises(NasddError, match="unknown method 'nope'; valid methods: .*cafe.*dm.*herding"):
        distill(digits, "nope", 1)
    with pytest.raises(NasddError, match="init"):
        distill(digits, "dm", 1, init="zeros", iterations=1)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_has_the_class_attributes(name):
    cls = METHODS.get(name)
    assert cls.family in ("coreset", "distribution matching", "parameter matching", "performance matching")
    assert cls.paper and "quick" in cls.presets and "cpu" in cls.presets
    common = {"iterations", "lr_img", "init", "arch", "match_space", "match_pool"}
    assert all(set(p) <= set(cls.options_type.kinds()) | common for p in cls.presets.values())


@pytest.mark.parametrize("name", METHODS.names())
def test_every_preset_is_data_of_valid_options(name):
    """A preset's method options are valid values of the method's option fields (type-checked), and a
    preset builds a Distiller whose options hold them."""
    cls = METHODS.get(name)
    for preset in cls.presets.values():
        options = {k: v for k, v in preset.items() if k in cls.options_type.kinds()}
        assert cls.options_type.make(name, options) == cls(ipc=1, **preset).opts
        assert cls(ipc=1, **preset).opts.record().items() >= options.items()


@pytest.mark.parametrize(
    "method,option,value,says",
    [
        ("dm", "batch_real", "16", "method dm option batch_real must be int, got '16'"),
        ("dm", "batch_real", 1.5, "method dm option batch_real must be int, got 1.5"),
        ("dm", "momentum", True, "method dm option momentum must be float, got True"),
        ("mtt", "zca", 1, "method mtt option zca must be bool, got 1"),
        ("ratbptt", "width", "wide", r"method ratbptt option width must be int \| None, got 'wide'"),
        ("cafe", "layer_weights", ["a"], r"method cafe option layer_weights must be list\[float\] \| None"),
        ("mtt", "syn_steps", 0, "method mtt option syn_steps must be a positive integer, got 0"),
        ("dc", "momentum_img", 1.0, r"method dc option momentum_img must be in \[0, 1\), got 1.0"),
        ("krr", "loss", "hinge", "method krr option loss 'hinge' is unknown; valid losses: mse, ce"),
        ("hcdc", "inner_steps", -1, "method hcdc option inner_steps must be an integer >= 0, got -1"),
    ],
)
def test_an_option_of_the_wrong_type_or_value_is_refused_in_one_line(method, option, value, says):
    """Checked when the Distiller is built (`Options.make`), before any data is touched."""
    with pytest.raises(NasddError, match=says) as err:
        METHODS.get(method)(ipc=1, **{option: value})
    assert "\n" not in str(err.value)


def test_options_are_frozen_and_reference_paths_are_unrecorded():
    d = DistributionMatching(ipc=1, batch_real=8, reference=True, compile_model=False)
    assert (d.opts.batch_real, d.opts.reference, d.opts.compile_model) == (8, True, False)
    with pytest.raises(AttributeError):
        d.opts.batch_real = 4  # type: ignore[misc]
    assert "reference" not in d.config() and "compile_model" not in d.config()
    assert d.config() == DistributionMatching(ipc=1, batch_real=8).config()


def test_iterations_and_lr_img_per_ipc():
    d = GradientMatching(ipc=10, iterations={1: 50, 10: 8}, lr_img={1: 1.0, 10: 0.1})
    assert (d.iterations, d.lr_img) == (8, 0.1)
    d = GradientMatching(ipc=2, iterations={1: 50, 10: 8}, lr_img=0.5)  # nearest ipc; plain values pass
    assert (d.iterations, d.lr_img) == (50, 0.5)
