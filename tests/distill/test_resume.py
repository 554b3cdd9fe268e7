"""A distillation killed with SIGKILL resumes from its checkpoint with --resume and ends where an
uninterrupted run ends (the base loop seeds every iteration); Ctrl-C or SIGTERM saves a checkpoint and
prints the command that resumes it; no rerun overwrites a checkpoint or a proxy."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasdd.distill.base import CHECKPOINT, METHODS
from nasdd.distill.proxy import ProxySet

ROOT = Path(__file__).resolve().parents[2]

# A small iterative method run by the base loop like every method: each step moves every synthetic image
# towards the mean of a random batch of real images of its class (plain gradient descent, no optimiser
# state), so the result depends on the per-iteration seeding and on every step having run.
METHOD = """
import os
import time
import torch
from nasdd.distill.base import Distiller, register

@register
class MeanStep(Distiller):
    name = "meanstep"
    family = "test"
    default_lr_img = 0.05

    def setup(self, bundle):
        self.x = bundle.x_train.to(self.dev)
        self.y = bundle.y_train.to(self.dev)

    def step(self, it):
        if it == 10 and os.environ.get("STARTED"):  # tells a test that the loop runs, and waits for its signal
            open(os.environ["STARTED"], "w").close()
            time.sleep(1.0)
        pick = torch.randint(len(self.x), (64,), device=self.dev)
        xb, yb = self.x[pick], self.y[pick]
        means = torch.stack([xb[yb == c].mean(0) if (yb == c).any() else xb.mean(0) for c in self.labels])
        loss = ((self.images - means) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, self.images)
        with torch.no_grad():
            self.images -= self.lr_img * grad * len(self.images)
        self.count(len(self.images))
        return float(loss.detach())
"""
RUN = METHOD + "\nimport sys\nfrom nasdd.cli import main\nsys.exit(main())\n"
ARGS = ["distill", "--dataset", "digits", "--method", "meanstep", "--ipc", "2", "--iterations", "3000"]
ARGS += ["--checkpoint-every", "50", "--quiet", "--device", "cpu", "--threads", "1"]


def distill_process(out, *extra, args=None, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-c", RUN, *(args or [*ARGS, "--out", str(out), *extra])]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_distillation_resumes_from_its_checkpoint(tmp_path, digits):
    out = tmp_path / "proxy"
    proc = distill_process(out)
    try:
        deadline = time.time() + 120
        while not (out / CHECKPOINT).exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    reached = torch.load(out / CHECKPOINT, weights_only=True)["iteration"]
    assert 0 < reached < 3000, "the kill must land in the middle of the run"
    assert not (out / "proxy.pt").exists() and not (out / "proxy.json").exists()  # nothing half-made
    resumed = distill_process(out, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "meanstep: 20 images (2 per class)" in stdout
    proxy = ProxySet.load(out, digits)  # complete and verified

    exec(METHOD, {})  # the same run, uninterrupted, in this process
    try:
        whole = METHODS.get("meanstep")(ipc=2, iterations=3000, device="cpu").run(digits)
    finally:
        METHODS._items.pop("meanstep")  # leave the registry as the other tests know it
    assert torch.allclose(proxy.images, whole.images, atol=1e-5)  # the resumed run ends where an uninterrupted one ends
    assert proxy.provenance["cost"]["sample_grads"] == whole.provenance["cost"]["sample_grads"] == 3000 * 20


N = 300  # iterations of the interruption tests


def uninterrupted(bundle, **kw):
    exec(METHOD, {})  # the same run, uninterrupted, in this process
    try:
        return METHODS.get("meanstep")(ipc=2, iterations=N, device="cpu", **kw).run(bundle)
    finally:
        METHODS._items.pop("meanstep")  # leave the registry as the other tests know it


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_interrupted_distillation_saves_and_its_printed_command_resumes_it(tmp_path, digits, sig):
    out, started = tmp_path / "proxy", tmp_path / "started"
    extra = ["--checkpoint-every", "0", "--iterations", str(N)]  # no periodic checkpoints
    proc = distill_process(out, *extra, env={"STARTED": str(started)})
    try:
        deadline = time.time() + 120
        while not started.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.02)
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = err.strip()
    assert "\n" not in line and line.startswith("nasdd distill: interrupted: meanstep stopped after iteration ")
    reached = torch.load(out / CHECKPOINT, weights_only=False)["iteration"]
    assert 10 < reached < N and f"iteration {reached} of {N}" in line and str(out / CHECKPOINT) in line
    printed = shlex.split(line.split("to resume, rerun: ", 1)[1])
    assert printed[0] == "nasdd" and "--resume" not in printed
    resumed = distill_process(out, args=printed[1:])
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"resuming from {out / CHECKPOINT} (iteration {reached} of {N})" in stderr
    proxy = ProxySet.load(out, digits)
    whole = uninterrupted(digits)
    assert torch.equal(proxy.images, whole.images)  # bitwise: the resumed run ends where an uninterrupted one ends
    assert proxy.provenance["cost"]["sample_grads"] == N * 20


def test_no_rerun_overwrites_a_checkpoint_or_a_proxy(tmp_path, digits, monkeypatch):
    from nasdd.arch import ArchSpec
    from nasdd.distill import Saving, distill
    from nasdd.distill.dm import DistributionMatching as DM
    from nasdd.errors import NasddError

    step, out = DM.step, tmp_path / "p"
    kw = {"iterations": 8, "batch_real": 8, "arch": ArchSpec.make("convnet", depth=1, width=8), "device": "cpu"}

    def interrupted(self, it):  # a second Ctrl-C in the middle of iteration 5
        if it == 5:
            raise KeyboardInterrupt
        return step(self, it)

    monkeypatch.setattr(DM, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(digits, "dm", 2, saving=Saving(out=out, checkpoint_every=3), **kw)
    monkeypatch.setattr(DM, "step", step)
    saved = (out / CHECKPOINT).read_bytes()
    with pytest.raises(NasddError, match="holds a checkpoint of this configuration .iteration 3.; resume it"):
        distill(digits, "dm", 2, saving=Saving(out=out), **kw)  # without resume: refused
    with pytest.raises(NasddError, match=r"another configuration \(seed differ\); use another `out`, or `overwrite`"):
        distill(digits, "dm", 2, seed=1, saving=Saving(out=out, resume=True), **kw)
    assert (out / CHECKPOINT).read_bytes() == saved  # untouched by both refusals
    proxy = distill(digits, "dm", 2, saving=Saving(out=out, resume=True), **kw)
    assert not (out / CHECKPOINT).exists()
    with pytest.raises(NasddError, match="already holds a proxy .method dm, ipc 2, dataset digits.; use another"):
        distill(digits, "random", 3, device="cpu", saving=Saving(out=out))
    assert ProxySet.load(out, digits).images.equal(proxy.images)
    again = distill(digits, "random", 3, device="cpu", saving=Saving(out=out, overwrite=True))
    assert ProxySet.load(out, digits).images.equal(again.images)
