"""Benchmark: `nasdd search` and `nasdd validate` by 1, 2 and 4 worker processes on one storage (journal, PostgreSQL).

Each row is a fresh study (search: `--trials` trials with the grid sampler, every trial a different
architecture; validate: the truth jobs of a `--pool`-member pool times `--truth-seeds` seeds, shared
through the result store) started as N identical worker processes with one torch thread each. The
architectures come from scripts/bench_workers_space.yaml (one shape, so trials cost about the same) and
trials last >= 10 s on one core (search: `--recipe` on a random ipc-10 mnist5k proxy; validate:
`--truth-recipe` on the full mnist5k train split). Throughput is counted trials (jobs) per minute between
the first trial's start and the last trial's end (storage timestamps, so process start-up is not counted;
`wall_s` includes it). The check: exactly `--trials` counted trials (jobs), all distinct architectures (jobs),
nothing left RUNNING or WAITING (`lost`, `duplicated`, `left_running` must be 0). A `killed` row starts 2
workers, SIGKILLs one mid-trial and starts a replacement: the study must still end complete and exact.

Profile columns from the storage: `train_s` (mean training seconds of a trial), `trial_s` (mean seconds
from a trial's creation to its end: training plus the in-trial storage and sampler work), `gap_s` (mean
seconds a worker spends between ending one trial and creating its next). `load_before`: the 1-minute load
average just before the row started (the machine has 2 cores; `idle` when below 0.5); it decays slowly, so
after the first row it mostly shows the benchmark's own previous row: run the whole script while nothing
else runs.

    OMP_NUM_THREADS=1 python scripts/bench_workers.py --postgres postgresql+psycopg2://postgres@127.0.0.1:55432/nasdd_test

PostgreSQL rows need `--postgres URL` (or NASDD_TEST_POSTGRES; start a throwaway server with
`eval "$(bash .ci/postgres.sh start)"`); each row gets a fresh database on that server. Without one only the
journal rows are measured.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

import _bench
import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from nasdd.search import is_counted
from nasdd.storage import open_storage
from nasdd.utils import ensure_dir

ROOT = _bench.ROOT
SPACE = ROOT / "scripts" / "bench_workers_space.yaml"
KEY = ["kind", "storage", "workers", "killed", "trials", "dataset", "space", "recipe"]  # the settings of a row


def load_avg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def worker_cmd(args: argparse.Namespace, kind: str, proxy: Path, storage: str, study: str) -> list[str]:
    """The command line of one worker (the `--out` folder is added per worker)."""
    common = ["--dataset", args.dataset, "--space", str(SPACE), "--device", args.device, "--quiet"]
    common += ["--threads", str(args.threads)]
    if kind == "search":
        cmd = ["search", "--proxy", str(proxy), "--study", study, "--trials", str(args.trials), "--storage", storage]
        cmd += ["--sampler", "grid", "--recipe", args.recipe, "--seed", "0", "--top", "1"]
    else:
        cmd = ["validate", "--pool", str(args.pool), "--truth-seeds", str(args.truth_seeds), "--storage", storage]
        cmd += ["--truth-recipe", args.truth_recipe, "--peers", "", "--resamples", "10"]
    return [sys.executable, "-m", "nasdd", *cmd, *common]


def run_workers(cmd: list[str], n: int, out: Path, storage: optuna.storages.BaseStorage | None) -> float:
    """Start `n` identical workers; return the wall seconds until the last one ends. With `storage`, SIGKILL
    worker 0 once it has trained for a few seconds and start a replacement (a restarted worker)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def start(i: int) -> subprocess.Popen:
        argv = [*cmd, "--out", str(out / f"w{i}")]
        return subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)

    t0 = time.perf_counter()
    procs = [start(i) for i in range(n)]
    if storage is not None:
        victim = f"{socket.gethostname()}:{procs[0].pid}"
        while not any(t.user_attrs.get("worker") == victim and age(t) > 4 for t in running(storage)):
            if procs[0].poll() is not None:
                raise SystemExit("the worker to kill ended before it ran a trial")
            time.sleep(0.5)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()  # reaped: its pid is gone, so the other workers see it died
        procs.append(start(n))
    for p in procs:
        _, err = p.communicate()
        if p.returncode not in (0, -signal.SIGKILL):
            raise SystemExit(f"a worker failed: {err.strip()}")
    return time.perf_counter() - t0


def running(storage: optuna.storages.BaseStorage) -> list[FrozenTrial]:
    states = (TrialState.RUNNING,)
    return [t for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id, False, states)]


def age(t: FrozenTrial) -> float:
    return 0.0 if t.datetime_start is None else (t.datetime_start.now() - t.datetime_start).total_seconds()


def measure(storage: optuna.storages.BaseStorage, kind: str, expected: int) -> dict:
    """The row's reliability, throughput and profile columns, from every trial in the storage."""
    trials = [t for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id, deepcopy=False)]
    if kind == "search":
        done = [t for t in trials if is_counted(t)]
        keys = [t.user_attrs.get("arch_key") for t in done]
        info = [t.user_attrs for t in done]
        retried = sum("retry_history" in t.system_attrs for t in done)
    else:
        done = [t for t in trials if "result" in t.user_attrs]
        keys = [t.user_attrs["job"] for t in done]
        info = [t.user_attrs["result"] for t in done]
        # a claim released or taken over after work had started (a claim losing a race fails at once)
        worked = [t for t in trials if t.state == TrialState.FAIL and "result" not in t.user_attrs]
        retried = sum((t.datetime_complete - t.datetime_start).total_seconds() > 2 for t in worked)
    start = min(t.datetime_start for t in done)
    window = (max(t.datetime_complete for t in done) - start).total_seconds()
    grads = sum(int(i.get("sample_grads") or 0) for i in info)
    return {
        "counted": len(done),
        "complete": sum(t.state == TrialState.COMPLETE for t in done),
        "lost": max(0, expected - len(set(keys))),
        "duplicated": len(keys) - len(set(keys)),
        "left_running": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
        "retried": retried,
        "distinct_workers": len({t.user_attrs.get("worker") for t in done}),
        "window_s": round(window, 2),
        "trials_per_min": round(60 * len(done) / window, 2),
        "sample_grads": grads,
        "sample_grads_per_min": round(60 * grads / window),
        "train_s": round(mean(float(i.get("seconds") or 0) for i in info), 2),
        "trial_s": round(mean((t.datetime_complete - t.datetime_start).total_seconds() for t in done), 2),
        "gap_s": round(gaps(done), 2),
    }


def gaps(done: list[FrozenTrial]) -> float:
    """Mean seconds between a worker's trial end and the creation of its next trial."""
    by_worker: dict[str, list[FrozenTrial]] = {}
    for t in done:
        by_worker.setdefault(str(t.user_attrs.get("worker")), []).append(t)
    out = []
    for ts in by_worker.values():
        ts.sort(key=lambda t: t.datetime_start)
        out += [(b.datetime_start - a.datetime_complete).total_seconds() for a, b in zip(ts, ts[1:], strict=False)]
    return mean(out) if out else 0.0


def fresh_storage(kind: str, base: str | None, name: str, work: Path) -> tuple[str, optuna.storages.BaseStorage]:
    """A new empty storage for one row: a journal file, or a new database on the PostgreSQL server of `base`."""
    if base is None:
        url = f"journal:{work / name}.log"
        return url, open_storage(url)
    db = name.replace("-", "_")
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {db}"))
    engine.dispose()
    url = sa.engine.make_url(base).set(database=db).render_as_string(hide_password=False)
    return url, open_storage(url)  # opened (tables created) before the workers start


def main() -> None:
    kw = {"dataset": "mnist5k", "device": "cpu", "threads": 1}
    ap = _bench.parser(__doc__, out="results/workers.csv", work="runs/bench_workers", **kw)
    ap.add_argument("--kinds", default="search,validate")
    ap.add_argument("--trials", type=int, default=10, help="search trials per row")
    ap.add_argument("--recipe", default="proxy,epochs=1000", help="search: proxy training recipe")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--pool", type=int, default=5, help="validate: pool members")
    ap.add_argument("--truth-seeds", type=int, default=2, help="validate: seeds per member")
    ap.add_argument("--truth-recipe", default="full,epochs=28", help="validate: truth recipe")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True, help="the SIGKILL row (2 workers)")
    ap.add_argument("--postgres", default=os.environ.get("NASDD_TEST_POSTGRES"), help="PostgreSQL URL")
    args = _bench.parse(ap)
    work = ensure_dir(args.work)
    proxy = _bench.random_proxy(work, args.dataset, args.ipc)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    storages = {"journal": None, **({"postgresql": args.postgres} if args.postgres else {})}
    runs = [(n, False) for n in map(int, args.workers.split(","))] + ([(2, True)] if args.kill else [])
    rows = []
    for kind in args.kinds.split(","):
        expected = args.trials if kind == "search" else args.pool * args.truth_seeds
        recipe = args.recipe if kind == "search" else args.truth_recipe
        for store_kind, base_url in storages.items():
            base = None
            for n, kill in runs:
                name = f"bench-{stamp}-{kind}-{store_kind}-{n}{'-kill' if kill else ''}"
                url, store = fresh_storage(store_kind, base_url, name, work)
                load = load_avg()
                cmd = worker_cmd(args, kind, proxy, url, name)
                wall = run_workers(cmd, n, work / name, store if kill else None)
                row = {"kind": kind, "storage": store_kind, "workers": n, "killed": int(kill), "trials": expected}
                row.update(wall_s=round(wall, 1), **measure(store, kind, expected))
                base = base or row["trials_per_min"]
                row["speedup_vs_1"] = round(row["trials_per_min"] / base, 2)
                row.update(load_before=load, idle=load < 0.5, dataset=args.dataset, space=SPACE.stem, recipe=recipe)
                row.update(sampler="grid" if kind == "search" else "claims", threads=args.threads)
                rows.append(row)
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    df = _bench.upsert(args.out, rows, KEY)  # rows of other settings are kept
    _bench.record(args.out)
    cols = ["kind", "storage", "workers", "killed", "trials_per_min", "speedup_vs_1", "lost", "duplicated"]
    print(df[[*cols, "left_running", "train_s", "trial_s", "gap_s", "load_before"]].to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
