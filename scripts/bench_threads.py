"""Thread count against contention: one small training (the quick preset's proxy trainings: the default
`convnet_cpu_pooled` member, `proxy,epochs=20` on 10 real images per class of mnist5k) timed with 1 thread,
2 threads and nasdd's default, interleaved round by round in one process, with the 1-minute load average
before each. Writes results/threads/small_training.csv.

    OMP_NUM_THREADS= nice -n 5 python scripts/bench_threads.py --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

from nasdd.data import load_dataset
from nasdd.distill import distill
from nasdd.spaces import load_space
from nasdd.train import TrainRecipe, train_arch
from nasdd.utils import default_threads, usable_cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", default="results/threads/small_training.csv")
    args = ap.parse_args()
    bundle = load_dataset("mnist5k")
    proxy = distill(bundle, "random", 10, seed=0)
    arch = load_space("convnet_cpu_pooled").default_arch()
    recipe = TrainRecipe.parse(f"proxy,epochs={args.epochs}")
    rows = []
    for r in range(args.rounds):
        default = default_threads()
        for label, n in (("1", 1), ("2", 2), ("default", default)):
            torch.set_num_threads(n)
            load = os.getloadavg()[0]
            t = time.perf_counter()
            res = train_arch(arch, proxy.images, proxy.labels, recipe, num_classes=10, seed=0, device="cpu")
            sec = time.perf_counter() - t
            cores = usable_cores()
            rows.append({"round": r, "threads": label, "torch_threads": n, "seconds": round(sec, 3),
                         "sample_grads": res.sample_grads, "load1_before": round(load, 2),
                         "affinity_cores": cores[0], "default_threads": cores[1]})  # fmt: skip
            print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
