"""Training and evaluation throughput of the one trainer for a few members of every search space.

For each space: its default member plus `--members` seeded random members. Each is built, trained
by `nasdd.train.fit` for about `--budget` seconds (after a 2-step warm-up that also sizes the run) and
evaluated on up to `--eval-images` test images. Writes images/second for training and evaluation,
forward FLOPs per image (torch's counter: convolutions and matmuls) and parameters, with the torch
thread count and device, to a CSV. Example (the committed results/train_throughput.csv)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/bench_train.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle, load_dataset
from nasdd.spaces import load_space
from nasdd.train import TrainRecipe, build_seeded, evaluate, fit
from nasdd.utils import atomic_open, progress, resolve_device


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def bench_member(
    space: str, spec: ArchSpec, bundle: DatasetBundle, args: argparse.Namespace, device: torch.device
) -> dict:
    shape = (bundle.channels, bundle.image_size, bundle.image_size)
    model = build_seeded(spec, shape, bundle.num_classes, seed=0)
    x, y = bundle.x_train, bundle.y_train
    recipe = TrainRecipe(steps=2, batch_size=args.batch_size, lr=0.01, schedule="constant")
    warm = fit(model, x, y, recipe, seed=0, device=device)  # warm-up; also measures a step
    steps = int(min(max(args.budget / max(warm.seconds / warm.steps, 1e-6), 3), args.max_steps))
    res = fit(model, x, y, TrainRecipe(steps=steps, batch_size=args.batch_size, lr=0.01), seed=1, device=device)
    xt, yt = bundle.x_test[: args.batch_size], bundle.y_test[: args.batch_size]
    evaluate(model, xt, yt, device=device, batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    evaluate(model, xt, yt, device=device, batch_size=args.batch_size)
    per_image = (time.perf_counter() - start) / len(yt)
    n_eval = int(min(max(args.budget / max(per_image, 1e-9), len(yt)), args.eval_images, len(bundle.y_test)))
    start = time.perf_counter()
    evaluate(model, bundle.x_test[:n_eval], bundle.y_test[:n_eval], device=device, batch_size=1024)
    eval_seconds = time.perf_counter() - start
    return {
        "space": space,
        "member": "default" if spec == load_space(space).default_arch() else "sampled",
        "arch": spec.short(),
        "arch_key": spec.key(),
        "params": res.params,
        "forward_mflops_per_image": round(res.flops_per_sample / 1e6, 3),
        "train_images_per_s": round(res.sample_grads / res.seconds, 1),
        "eval_images_per_s": round(n_eval / eval_seconds, 1),
        "train_steps": res.steps,
        "batch_size": args.batch_size,
        "sample_grads": res.sample_grads,
        "train_seconds": round(res.seconds, 2),
        "eval_images": n_eval,
        "eval_seconds": round(eval_seconds, 2),
        "input": "x".join(map(str, shape)),
        "dataset": bundle.name,
        "torch_threads": torch.get_num_threads(),
        "device": _device_name(device),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 1),  # the machine is shared: a high load slows every row
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=["convnet_dc", "convnet_cpu", "cell201"])
    parser.add_argument("--members", type=int, default=2, help="seeded random members per space, besides the default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--batch-size", type=int, default=64, help="the full-data recipe's batch size")
    parser.add_argument("--budget", type=float, default=4.0, help="about this many seconds of training per member")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="results/train_throughput.csv")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    bundle = load_dataset(args.dataset)
    jobs = []
    for name in args.spaces:
        space = load_space(name)
        rng = random.Random(args.seed)
        jobs += [(name, space.default_arch())] + [(name, space.sample(rng)) for _ in range(args.members)]
    rows = []
    for name, spec in progress(jobs, desc="bench"):
        rows.append(bench_member(name, spec, bundle, args, device))
        r = rows[-1]
        print(
            f"{name:12s} {r['forward_mflops_per_image']:9.2f} MFLOP  train {r['train_images_per_s']:8.1f} img/s  "
            f"eval {r['eval_images_per_s']:8.1f} img/s  {r['arch']}",
            flush=True,
        )
    with atomic_open(args.out) as f:
        pd.DataFrame(rows).to_csv(f, index=False)
    print(f"wrote {args.out} ({len(rows)} rows, torch threads {torch.get_num_threads()}, device {device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
