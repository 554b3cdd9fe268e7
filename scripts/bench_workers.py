"""Benchmark: one search run by 1, 2 and 4 worker processes on one storage (journal file, PostgreSQL).

Each configuration is a fresh study of `--trials` trials with the grid sampler (every trial a different
architecture, the same grid order in every worker), started as N identical `nasdd search` processes with
one torch thread each. Throughput is counted trials per minute between the first trial's start and the
last trial's end (from the storage's timestamps, so process start-up is not counted; `wall_s` includes
it), with sample-gradient evaluations per minute as the machine-independent work rate. The check: the
study ends with exactly `--trials` counted trials, all distinct architectures, nothing left RUNNING or
WAITING (`lost` and `duplicated` must be 0).

    python scripts/bench_workers.py --postgres postgresql+psycopg2://postgres@127.0.0.1:55493/nasdd_test

PostgreSQL rows need `--postgres URL` (or NASDD_TEST_POSTGRES; start a throwaway server with
`eval "$(bash .ci/postgres.sh start)"`); without one only the journal rows are measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import _bench
import optuna
from optuna.trial import TrialState

from nasdd.data import load_dataset
from nasdd.distill import distill
from nasdd.search import is_counted
from nasdd.utils import ensure_dir

ROOT = _bench.ROOT
KEY = ["storage", "workers", "trials", "dataset", "space", "recipe"]  # the settings of a row


def run_workers(args: argparse.Namespace, proxy: Path, storage: str, study: str, n: int, out: Path) -> float:
    """Start `n` identical workers on one storage; return the wall seconds until the last one ends."""
    cmd = [sys.executable, "-m", "nasdd", "search", "--space", args.space, "--proxy", str(proxy)]
    cmd += ["--dataset", args.dataset, "--study", study, "--trials", str(args.trials), "--storage", storage]
    cmd += ["--sampler", "grid", "--recipe", args.recipe, "--seed", "0", "--threads", str(args.threads), "--quiet"]
    cmd += ["--device", args.device, "--top", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*cmd, "--out", str(out / f"w{i}")], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed: {err.strip()}")
    return time.perf_counter() - start


def measure(study: optuna.Study, trials: int) -> dict:
    all_trials = study.get_trials(deepcopy=False)
    counted = [t for t in all_trials if is_counted(t)]
    window = (max(t.datetime_complete for t in counted) - min(t.datetime_start for t in counted)).total_seconds()
    archs = {t.user_attrs.get("arch_key") for t in counted}
    grads = sum(int(t.user_attrs.get("sample_grads") or 0) for t in counted)
    left = [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return {
        "counted": len(counted),
        "complete": sum(t.state == TrialState.COMPLETE for t in counted),
        "lost": max(0, trials - len(counted)),
        "duplicated": len(counted) - len(archs),
        "left_running": len(left),
        "distinct_workers": len({t.user_attrs.get("worker") for t in counted}),
        "window_s": round(window, 2),
        "trials_per_min": round(60 * len(counted) / window, 2),
        "sample_grads": grads,
        "sample_grads_per_min": round(60 * grads / window),
    }


def main() -> None:
    kw = {"dataset": "digits", "device": "cpu", "threads": 1}
    ap = _bench.parser(__doc__, out="results/workers.csv", work="runs/bench_workers", **kw)
    ap.add_argument("--space", default="convnet_cpu")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--recipe", default="proxy,epochs=200")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--postgres", default=os.environ.get("NASDD_TEST_POSTGRES"), help="PostgreSQL URL")
    args = _bench.parse(ap)
    work = ensure_dir(args.work)
    proxy = work / f"proxy-{args.dataset}-random-ipc{args.ipc}"
    if not (proxy / "proxy.json").exists():
        distill(load_dataset(args.dataset), "random", ipc=args.ipc, seed=0, out=proxy)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    storages = {"journal": None, **({"postgresql": args.postgres} if args.postgres else {})}
    rows = []
    for kind, url in storages.items():
        base = None
        for n in (int(w) for w in args.workers.split(",")):
            name = f"bench-{stamp}-{kind}-{n}"
            if url is None:
                log = work / f"{name}.log"
                url_n = f"journal:{log}"
                store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
            else:
                url_n = store = url
            wall = run_workers(args, proxy, url_n, name, n, work / name)
            row = {"storage": kind, "workers": n, "trials": args.trials, "wall_s": round(wall, 1)}
            row.update(measure(optuna.load_study(study_name=name, storage=store), args.trials))
            base = base or row["trials_per_min"]
            row["speedup_vs_1"] = round(row["trials_per_min"] / base, 2)
            row.update(dataset=args.dataset, space=args.space, recipe=args.recipe, sampler="grid", threads=args.threads)
            rows.append(row)
            print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    df = _bench.upsert(args.out, rows, KEY)  # rows of other settings (e.g. a PostgreSQL-only run) are kept
    _bench.record(args.out)
    print(df[["storage", "workers", "trials_per_min", "speedup_vs_1", "lost", "duplicated", "left_running"]])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
