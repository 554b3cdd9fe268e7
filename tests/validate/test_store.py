import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.validate.store import Job, ResultStore

GROUP = ("digits-x", "train", "recipe")
JOBS = [Job(ArchSpec.make("convnet", depth=d), s, "test") for d in (1, 2) for s in (0, 1)]


def counting():
    calls = []

    def compute(job):
        calls.append(job.key)
        return float(job.arch["depth"] + job.seed), {"accuracy": float(job.arch["depth"] + job.seed)}

    return calls, compute


def test_results_persist_across_stores(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    calls, compute = counting()
    first = ResultStore(url).run(GROUP, JOBS, compute)
    assert len(calls) == 4 and first[JOBS[3].key]["accuracy"] == 3.0
    again = ResultStore(url).run(GROUP, JOBS, compute)  # another run (or worker) on the same storage
    assert len(calls) == 4 and again == first
    ResultStore(url).run(("digits-x", "train", "other-recipe"), JOBS[:1], compute)
    assert len(calls) == 5  # another recipe is another result


def test_interrupted_job_releases_its_claim(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"

    def boom(job):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ResultStore(url).run(GROUP, JOBS[:1], boom)
    calls, compute = counting()
    ResultStore(url).run(GROUP, JOBS[:1], compute)
    assert calls == [JOBS[0].key]


def _claim(store, job, worker):
    trial = store.study(GROUP).ask()
    trial.set_user_attr("job", job.key)
    trial.set_user_attr("worker", worker)
    return trial


def test_dead_workers_claim_is_taken_over(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _claim(store, JOBS[0], f"{socket.gethostname()}:{dead.stdout.strip()}")
    calls, compute = counting()
    store.run(GROUP, JOBS[:1], compute)
    assert calls == [JOBS[0].key]


def test_live_claim_of_another_worker_is_waited_for(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    other = ResultStore(url)
    trial = _claim(other, JOBS[0], "another-host:1")
    calls, compute = counting()
    out = {}
    worker = threading.Thread(target=lambda: out.update(ResultStore(url, poll_seconds=0.2).run(GROUP, JOBS, compute)))
    worker.start()
    time.sleep(1.5)
    trial.set_user_attr("result", {"accuracy": 0.5})
    other.study(GROUP).tell(trial, 0.5)
    worker.join(timeout=60)
    assert JOBS[0].key not in calls and len(calls) == 3
    assert out[JOBS[0].key] == {"accuracy": 0.5}
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in other.study(GROUP).trials) == 4


def test_bad_storage_url():
    with pytest.raises(NasddError, match="cannot open storage"):
        ResultStore("nosuchdialect://x")


def test_unclaimed_jobs_are_recorded_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    calls, compute = counting()
    first = ResultStore(url).run(GROUP, JOBS, compute, claim=False)
    assert ResultStore(url).run(GROUP, JOBS, compute) == first and len(calls) == 4
