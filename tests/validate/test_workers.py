"""`nasdd validate` as N identical processes on one storage: every training done once, tables equal to
a single worker's."""

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from nasdd.arch import ArchSpec
from nasdd.distill import distill
from nasdd.validate.store import Job, ResultStore

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")


def validate_process(proxy, storage, out):
    args = ["validate", "--dataset", "digits", "--space", TINY, "--pool", "4", "--proxies", str(proxy)]
    args += ["--peers", "params,random", "--truth-seeds", "2", "--truth-recipe", "full,epochs=2"]
    args += ["--proxy-recipe", "proxy,epochs=20", "--resamples", "100", "--quiet", "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "nasdd", *args, "--storage", storage, "--out", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs):
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err


def tables(out):
    per_arch = pd.read_csv(out / "per_arch.csv")
    summary = pd.read_csv(out / "summary.csv")
    return per_arch, summary.drop(columns=[c for c in summary if "seconds" in c])  # wall time differs per run


@pytest.mark.slow  # ~100 s; claims, waits and take-overs are covered fast in test_store.py and below
@pytest.mark.parametrize("kind", ["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_three_workers_share_the_trainings_and_match_one(digits, tmp_path, kind, request):
    proxy = distill(digits, "random", ipc=5, seed=0).save(tmp_path / "proxy")
    if kind == "journal":
        shared = f"journal:{tmp_path / 'shared.log'}"
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "shared.log"))
        )
    else:
        pg = request.getfixturevalue("postgres_url")
        import sqlalchemy

        with sqlalchemy.create_engine(pg, isolation_level="AUTOCOMMIT").connect() as c:  # a fresh database
            name = f"validate_{os.getpid()}_{tmp_path.name[-8:].lower()}".replace("-", "_")
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
            c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        shared = storage = pg.rsplit("/", 1)[0] + f"/{name}"
    finish(*[validate_process(proxy, shared, tmp_path / f"w{i}") for i in range(3)])
    finish(validate_process(proxy, f"sqlite:///{tmp_path / 'one.db'}", tmp_path / "one"))

    ref_arch, ref_summary = tables(tmp_path / "one")
    for i in range(3):
        per_arch, summary = tables(tmp_path / f"w{i}")
        pd.testing.assert_frame_equal(per_arch, ref_arch)
        pd.testing.assert_frame_equal(summary, ref_summary)

    results = [
        (s.study_name, t.user_attrs["job"], t.user_attrs["worker"])
        for s in optuna.get_all_study_summaries(storage)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
        if "result" in t.user_attrs
    ]
    per_job = Counter((study, job) for study, job, _ in results if "/zerocost-" not in study)
    assert per_job and max(per_job.values()) == 1  # every training done once (zero-cost scores are unclaimed)
    assert len({w for _, _, w in results}) >= 2  # and the work was shared out


def test_claim_whose_heartbeat_stopped_is_taken_over_and_failed(tmp_path):
    """A worker killed on another host: its claim's beat stops; after three heartbeats another worker
    marks it FAIL and does the job; a claim with a fresh beat is waited for instead."""
    url = f"journal:{tmp_path / 'r.log'}"
    group = ("digits-x", "train", "recipe")
    jobs = [Job(ArchSpec.make("convnet", depth=d), 0, "test") for d in (1, 2)]
    store = ResultStore(url, heartbeat=1.0, poll_seconds=0.2)
    study = store.study(group)
    for job, beat in ((jobs[0], time.time() - 10), (jobs[1], time.time())):  # dead, then alive
        attrs = {"job": job.key, "worker": "another-host:1", "beat": beat, "beat_every": 1.0}
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs))
    calls = []

    def compute(job):
        calls.append(job.key)
        return 1.0, {"accuracy": 1.0}

    assert store.run(group, jobs[:1], compute) == {jobs[0].key: {"accuracy": 1.0}}
    assert calls == [jobs[0].key]
    states = {t.user_attrs["job"]: t.state for t in study.get_trials() if t.user_attrs["worker"] == "another-host:1"}
    assert states == {jobs[0].key: TrialState.FAIL, jobs[1].key: TrialState.RUNNING}
