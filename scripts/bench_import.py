"""Benchmark: `nasdd bench` on a proxy imported from another codebase's file, against the committed benchmark.

The random-ipc10 subset of the ranking benchmark (nasdd's `random` distiller, seed 0, preset cpu: the
subset peer `scripts/bench_rank.py` trains) is written as the original DC/DSA/DM code saves its result
(`torch.save({'data': [[images, labels]], 'accs_all_exps': ...})`, images normalised with that code's
Fashion-MNIST mean 0.2861 / std 0.3530) and, with `--variant npz`, as a `.npz` of [0, 1] pixels. Each
file is imported with `nasdd import-proxy` and audited with `nasdd bench` at one budget in a fresh
storage (every member trains), timed as a subprocess; its tau is compared with the committed benchmark's
random-ipc10 row at that budget. The DC round trip moves some pixels by one float32 ulp (the file holds
float32 values in another normalisation); the pixel file reproduces the tensors bit for bit.
`--replay JOURNAL` audits with a copy of the benchmark's own journal as the storage, so the recorded
trainings of the same proxy and recipe are read instead of trained (the protocol's job keys are shared).

    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_import.py --threads 1 --quiet --variant dc
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _bench
import numpy as np
import pandas as pd
import torch

from nasdd.data import load_dataset
from nasdd.distill import distill


def export(proxy, bundle, variant: str, folder: Path) -> Path:  # noqa: ANN001
    """The proxy as another codebase would save it: a DC result file or a .npz of pixels."""
    mean = torch.tensor(bundle.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std, dtype=torch.float64).view(1, -1, 1, 1)
    pixels = proxy.images.double() * std + mean
    folder.mkdir(parents=True, exist_ok=True)
    if variant == "dc":
        path = folder / "res_random_FashionMNIST_ConvNet_10ipc.pt"
        images = ((pixels - 0.2861) / 0.3530).float()
        torch.save({"data": [[images, proxy.labels.clone()]], "accs_all_exps": {"ConvNet": []}}, path)
    else:
        path = folder / "random_ipc10_pixels.npz"
        np.savez(path, images=pixels.float().numpy(), labels=proxy.labels.numpy())
    return path


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of `nasdd ARGV` run as a subprocess."""
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "nasdd", *argv], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    print(done.stdout[-2500:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def main() -> None:
    ap = _bench.parser(__doc__, out="results/bench_import_fashion_mnist.csv", work="runs/bench_import", dataset=None)
    ap.add_argument("--variant", choices=("dc", "npz"), default="dc")
    ap.add_argument("--budget", default="1/100")
    ap.add_argument("--committed", default="results/bench_fashion_mnist/summary.csv")
    ap.add_argument("--replay", default=None, help="a copy of this journal is the storage: recorded trainings are read")
    args = _bench.parse(ap)
    variant = args.variant + ("-replay" if args.replay else "")
    work = Path(args.work) / variant
    if work.exists():
        shutil.rmtree(work)  # a fresh storage: every member trains
    bundle = load_dataset("fashion_mnist")
    proxy = distill(bundle, "random", 10, seed=0, preset="cpu")
    src = export(proxy, bundle, args.variant, work)
    norm = ["--normalization", "none"] if args.variant == "npz" else []
    imp = ["import-proxy", str(src), "--dataset", "fashion_mnist", "--method", "random", "--out", str(work / "proxy")]
    t_import, c_import = timed([*imp, *norm, "--quiet"])
    from nasdd.distill import ProxySet

    imported = ProxySet.load(work / "proxy", bundle)
    differ = int((imported.images != proxy.images).sum())
    load = os.getloadavg()[0]
    name = f"random-ipc10-{variant}"
    bench = ["bench", f"{work / 'proxy'}={name}", "--benchmark", "fashion_mnist", "--budgets", args.budget]
    bench += ["--out", str(work / "bench"), "--threads", str(args.threads or 1), "--quiet", "--resamples", "1000"]
    if args.replay:
        shutil.copy(args.replay, work / "replay.journal")
        bench += ["--storage", f"journal:{work / 'replay.journal'}"]
    t_bench, c_bench = timed(bench)
    load_after = os.getloadavg()[0]
    s = pd.read_csv(work / "bench" / "summary.csv")
    mine = s[s.name == name].iloc[0]
    c = pd.read_csv(args.committed)
    ref = c[(c.budget == args.budget) & (c.name == "random-ipc10")].iloc[0]
    row = {
        "variant": variant,
        "budget": args.budget,
        "proxy": name,
        "source_proxy_id": proxy.id,
        "committed_proxy_id": ref.proxy_id,
        "pixels_differing": differ,
        "pixels": int(proxy.images.numel()),
        "tau_bench": round(float(mine.tau), 4),
        "tau_bench_low": round(float(mine.tau_low), 4),
        "tau_bench_high": round(float(mine.tau_high), 4),
        "tau_committed": float(ref.tau),
        "tau_equal_4dp": round(float(mine.tau), 4) == round(float(ref.tau), 4),
        "members": int(mine.n_archs),
        "sample_grads_per_candidate": float(mine.grads_per_candidate),
        "sample_grads_total": float(mine.cost_sample_grads),
        "train_seconds_sum": round(float(mine.cost_seconds), 1),
        "import_wall_s": round(t_import, 1),
        "bench_wall_s": round(t_bench, 1),
        "import_cpu_s": round(c_import, 1),
        "bench_cpu_s": round(c_bench, 1),
        "threads": args.threads or 1,
        "loadavg_1min_before": round(load, 2),
        "loadavg_1min_after": round(load_after, 2),
        "cpus": os.cpu_count(),
    }
    print(pd.Series(row).to_string())
    _bench.upsert(args.out, [row], key=["variant", "budget"])
    res = Path(args.out).with_suffix("")
    res.mkdir(parents=True, exist_ok=True)
    for f in ("summary.csv", "paired.csv", "verdict.md", "bench.png"):
        shutil.copy(work / "bench" / f, res / f"{variant}_{f}")
    _bench.record(args.out)


if __name__ == "__main__":
    main()
