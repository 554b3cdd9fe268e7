"""Peak memory of one mtt iteration against the number of unrolled student steps.

    python scripts/bench_mtt_memory.py --dataset mnist5k --ipc 10 --steps 10,20,40 --preset cpu

Each setting runs in a fresh subprocess (same ipc, same network, same experts) and measures the growth of
the process's peak memory during one meta-gradient: CUDA max_memory_allocated on GPU, on CPU the peak
resident set (VmHWM reset through /proc/self/clear_refs; ru_maxrss of the fresh process where that is
unavailable). `bounded` is nasdd's gradient (adjoint recomputation), `unrolled` the paper's
back-propagation through the whole unrolled graph, shown for contrast. Writes results/mtt_memory.csv.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import _bench
import pandas as pd
import torch

from nasdd.data import load_dataset
from nasdd.distill import METHODS
from nasdd.distill.mtt import make_plan, match_grad, match_loss_unrolled
from nasdd.utils import proc_status_kb, resolve_device


def child(args: argparse.Namespace) -> dict:
    """One setting in this (fresh) process: set up mtt, then measure one meta-gradient."""
    bundle = load_dataset(args.dataset)
    cls = METHODS.get("mtt")
    opts = {**cls.presets[args.preset], "syn_steps": args.child_steps, "iterations": 0}
    d = cls(ipc=args.ipc, seed=0, device=args.device, **opts)
    d.run(bundle)  # loads (or trains) the experts and builds the network; no iteration
    dev = resolve_device(args.device)
    torch.manual_seed(0)
    traj = d.trajs[0]
    w0, target = traj[0], traj[d.opts.expert_epochs]
    n = len(d.images)
    plan = make_plan(n, args.child_steps, min(d.opts.batch_syn or n, n), d.dsa, dev)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            base, hwm = proc_status_kb("VmRSS"), True
        except OSError:
            base, hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
    start = time.perf_counter()
    if args.child_mode == "bounded":
        match_grad(d.net, w0, target, d.images, d.labels, d.syn_lr, plan)
    else:
        loss = match_loss_unrolled(d.net, w0, target, d.images, d.labels, d.syn_lr, plan)
        torch.autograd.grad(loss, [d.images, d.syn_lr])
    seconds = time.perf_counter() - start
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:
        top = proc_status_kb("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = max(top - base, 0) / 1024
    return {
        "mode": args.child_mode,
        "syn_steps": args.child_steps,
        "ipc": args.ipc,
        "batch_syn": min(d.opts.batch_syn or n, n),
        "arch": d.arch.short(),
        "params": sum(d.net.numels),
        "device": dev.type,
        "peak_mem_mb": round(peak, 1),
        "process_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(seconds, 2),
        "sample_grads": (3 if args.child_mode == "bounded" else 2) * sum(len(b) for b in plan.batches),
    }


def main(argv: list[str] | None = None) -> int:
    p = _bench.parser(__doc__, out="results/mtt_memory.csv")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", default="10,20,40")
    p.add_argument("--modes", default="bounded,unrolled")
    p.add_argument("--preset", default="cpu", help="mtt preset giving the network, experts and batch")
    p.add_argument("--child-mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = _bench.parse(p, argv)
    if args.child_mode:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for mode in args.modes.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            cmd = [sys.executable, __file__, *(argv or sys.argv[1:]), "--child-mode", mode, "--child-steps", str(steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    first = df.groupby("mode")["peak_mem_mb"].transform("first")
    df["ratio_to_first"] = (df["peak_mem_mb"] / first).round(2)
    _bench.write(df, args.out)
    _bench.record(args.out, argv)
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
