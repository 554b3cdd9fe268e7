"""Chaos run: `nasdd search` workers on PostgreSQL while workers are SIGKILLed and the server restarts.

Two rows, each a fresh database on the PostgreSQL server of `--postgres` (started by `.ci/postgres.sh`,
which this script also uses to restart it): `clean`, N workers and no faults, and `chaos`, the same study
while a random live worker is SIGKILLed every `--kill-every` seconds (±50 %) and the server is stopped
(open sessions cut) for `--down` seconds, `--restarts` times spread over the run. A worker that ends,
however, is replaced while the study is short of its trials; each exit is classified: finished (0),
killed (SIGKILL), one line (a NasddError: exit 2 and one stderr line) or other (anything else, e.g. a
traceback: must be 0). The storage URL carries a password and reaches the workers through NASDD_STORAGE.

The check (from the storage): `finished` counted trials == `requested`; `lost` (requested minus finished,
plus trials left RUNNING/WAITING) and `duplicated` (finished beyond requested, plus a retried trial
counted beside its original) must be 0; `retried` counts trials queued again after their worker died.
`overhead` is the chaos row's wall time over the clean row's, minus 1 (worker start-ups included).

    eval "$(NASDD_PG_PORT=55440 bash .ci/postgres.sh start)"
    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_chaos.py --quiet
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import _bench
import optuna
import sqlalchemy as sa
from bench_workers import fresh_storage, load_avg
from optuna.trial import TrialState

from nasdd.search import is_counted
from nasdd.storage import hide, open_storage
from nasdd.utils import ensure_dir

ROOT = _bench.ROOT
KEY = ["run", "workers", "requested", "dataset", "space", "recipe"]


class Fleet:
    """The worker processes of one row: started, replaced, killed and classified."""

    def __init__(self, cmd: list[str], url: str, log: Path) -> None:
        self.cmd, self.log = cmd, log
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "NASDD_STORAGE": url}
        self.live: list[tuple[subprocess.Popen, Path]] = []
        self.exits = {"finished": 0, "killed": 0, "one_line": 0, "other": 0}
        self.starts = self.kills = 0
        self.lines: list[str] = []

    def start(self) -> None:
        err = self.log / f"worker{self.starts}.err"
        with open(err, "w") as f:
            argv = [sys.executable, "-m", "nasdd", *self.cmd, "--out", str(self.log / f"w{self.starts}")]
            self.live.append((subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=f), err))
        self.starts += 1

    def reap(self) -> int:
        """Classify the workers that ended; return how many."""
        ended = [(p, e) for p, e in self.live if p.poll() is not None]
        for p, err in ended:
            self.live.remove((p, err))
            text = [line for line in err.read_text().splitlines() if line.strip()]
            kind = {0: "finished", -signal.SIGKILL: "killed"}.get(p.returncode)
            if kind is None:
                kind = "one_line" if p.returncode == 2 and len(text) == 1 else "other"
                self.lines.append(f"exit {p.returncode}: " + " | ".join(text[-3:]))
            self.exits[kind] += 1
        return len(ended)

    def kill_one(self, rng: random.Random) -> None:
        if self.live:
            p, _ = rng.choice(self.live)
            p.send_signal(signal.SIGKILL)
            p.wait()  # reaped: its pid is gone, so the other workers see it died
            self.kills += 1


def counted(store: optuna.storages.BaseStorage, study: str) -> int:
    try:
        return sum(map(is_counted, store.get_all_trials(store.get_study_id_from_name(study), deepcopy=False)))
    except Exception:  # not created yet, or the server is restarting
        return 0


def restart_server(url: str, down: float) -> None:
    port = sa.engine.make_url(url).port
    env = {**os.environ, "NASDD_PG_PORT": str(port)}
    subprocess.run(["bash", ".ci/postgres.sh", "restart", str(down)], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip


def run_row(args: argparse.Namespace, cmd: list[str], url: str, study: str, work: Path, chaos: bool) -> dict:
    """Run one row to completion; return its wall seconds and worker statistics."""
    fleet, rng = Fleet(cmd, url, ensure_dir(work)), random.Random(args.seed)
    store = open_storage(url)  # reconnects after a restart like the workers do
    restarts_at = [args.trials * (k + 1) / (args.restarts + 1) for k in range(args.restarts)] if chaos else []
    restarter: threading.Thread | None = None
    restarts = 0
    t0 = time.perf_counter()
    next_kill = t0 + args.kill_every * rng.uniform(0.5, 1.5)
    for _ in range(args.workers):
        fleet.start()
    while True:
        time.sleep(0.5)
        fleet.reap()
        done = counted(store, study)
        if done >= args.trials and not fleet.live:
            break
        if time.perf_counter() - t0 > args.limit:
            raise SystemExit(f"the {'chaos' if chaos else 'clean'} row passed --limit {args.limit} s")
        if done < args.trials:
            while len(fleet.live) < args.workers:  # replace ended workers while the study is short
                fleet.start()
        if chaos and done < args.trials and time.perf_counter() >= next_kill:
            fleet.kill_one(rng)
            next_kill = time.perf_counter() + args.kill_every * rng.uniform(0.5, 1.5)
        if restarts_at and done >= restarts_at[0] and (restarter is None or not restarter.is_alive()):
            restarts_at.pop(0)
            restarts += 1
            restarter = threading.Thread(target=restart_server, args=(url, args.down))
            restarter.start()
    if restarter is not None:
        restarter.join()
    wall = time.perf_counter() - t0
    for line in fleet.lines:
        print(f"  {line}", file=sys.stderr)
    return {
        "wall_s": round(wall, 1),
        "kills": fleet.kills,
        "server_restarts": restarts,
        "worker_starts": fleet.starts,
        **{f"exit_{k}": v for k, v in fleet.exits.items()},
    }


def measure(url: str, study: str, requested: int) -> dict:
    """Requested / finished / lost / duplicated / retried, from every trial in the storage."""
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    done = [t for t in trials if is_counted(t)]
    numbers = {t.number for t in done}
    doubled = sum(any(n in numbers for n in t.system_attrs.get("retry_history", [])) for t in done)
    left = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    return {
        "finished": len(done),
        "complete": sum(t.state == TrialState.COMPLETE for t in done),
        "lost": max(0, requested - len(done)) + left,
        "duplicated": max(0, len(done) - requested) + doubled,
        "retried": sum("retry_history" in t.system_attrs for t in trials),
        "failed_not_counted": sum(t.state == TrialState.FAIL and not is_counted(t) for t in trials),
        "sample_grads": sum(int(t.user_attrs.get("sample_grads") or 0) for t in done),
    }


def main() -> None:
    kw = {"dataset": "digits", "device": "cpu", "threads": 1}
    ap = _bench.parser(__doc__, out="results/chaos.csv", work="runs/bench_chaos", **kw)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--space", default="convnet_cpu")
    ap.add_argument("--recipe", default="proxy,epochs=20")
    ap.add_argument("--ipc", type=int, default=5)
    ap.add_argument("--kill-every", type=float, default=12.0, help="seconds between SIGKILLs (±50 %%)")
    ap.add_argument("--restarts", type=int, default=2, help="server restarts during the chaos row")
    ap.add_argument("--down", type=float, default=2.0, help="seconds the server stays down per restart")
    ap.add_argument("--limit", type=float, default=900.0, help="give up a row after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="clean,chaos")
    ap.add_argument("--postgres", default=os.environ.get("NASDD_TEST_POSTGRES"), help="PostgreSQL URL")
    args = _bench.parse(ap)
    if not args.postgres:
        raise SystemExit('give --postgres URL (eval "$(NASDD_PG_PORT=55440 bash .ci/postgres.sh start)")')
    base = sa.engine.make_url(args.postgres)
    base = base.set(password=base.password or "chaos-Secret-Pw").render_as_string(hide_password=False)
    work = ensure_dir(args.work)
    proxy = _bench.random_proxy(work, args.dataset, args.ipc)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for run in args.rows.split(","):
        name = f"chaos-{stamp}-{run}"
        url, _ = fresh_storage("postgresql", base, name, work)
        cmd = ["search", "--space", args.space, "--proxy", str(proxy), "--dataset", args.dataset, "--study", name]
        cmd += ["--trials", str(args.trials), "--recipe", args.recipe, "--sampler", "random", "--quiet"]
        cmd += ["--threads", "1", "--device", "cpu", "--heartbeat", "2"]
        key = dict(zip(KEY, [run, args.workers, args.trials, args.dataset, args.space, args.recipe], strict=True))
        load = load_avg()
        print(f"{run}: {args.workers} workers, {args.trials} trials (load {load:.1f})", file=sys.stderr)
        stats = run_row(args, cmd, url, name, work / name, chaos=run == "chaos")
        row = {**key, **measure(url, name, args.trials), **stats, "load_before": load}
        rows.append(row)
        print(row, file=sys.stderr)
        _bench.upsert(args.out, [row], key=KEY)
    clean = next((r for r in rows if r["run"] == "clean"), None)
    for r in rows:
        if clean is not None and r["run"] == "chaos":
            r["overhead"] = round(r["wall_s"] / clean["wall_s"] - 1, 3)
    _bench.upsert(args.out, rows, key=KEY)
    _bench.record(args.out, [hide(a) for a in sys.argv[1:]])  # a password in --postgres stays out


if __name__ == "__main__":
    main()
