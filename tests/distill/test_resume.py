"""A distillation killed with SIGKILL resumes from its checkpoint with --resume and ends where an
uninterrupted run ends (the base loop seeds every iteration)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from nasdd.distill.base import CHECKPOINT, METHODS
from nasdd.distill.proxy import ProxySet

ROOT = Path(__file__).resolve().parents[2]

# A small iterative method run by the base loop like every method: each step moves every synthetic image
# towards the mean of a random batch of real images of its class (plain gradient descent, no optimiser
# state), so the result depends on the per-iteration seeding and on every step having run.
METHOD = """
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


def distill_process(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", RUN, *ARGS, "--out", str(out), *extra]
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
