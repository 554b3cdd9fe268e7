"""The storage failing under a search: a PostgreSQL restart (workers reconnect, or exit with one line and
resume), a server away for longer than the reconnect window, an SQLite file on a full disk, a journal
cut off mid-line. Every case ends, after reruns, with exactly the requested trials; none prints a traceback."""

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from nasdd.cli import main
from nasdd.search import is_counted

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")
RECIPE = "proxy,epochs=100"  # a fraction of a second per trial (idle core)


def args(proxy, storage, study, trials, out):
    a = ["search", "--space", TINY, "--proxy", str(proxy), "--dataset", "digits", "--study", study]
    a += ["--trials", str(trials), "--recipe", RECIPE, "--sampler", "random", "--quiet", "--threads", "1"]
    a += ["--device", "cpu", "--heartbeat", "1", "--out", str(out)]
    return a + (["--storage", storage] if storage else [])


def worker(proxy, storage, study, trials, out, preexec=None, **env):
    """`nasdd search` in a subprocess; the PostgreSQL URL (with its password) travels in NASDD_STORAGE."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "NASDD_STORAGE": storage or "", **env}
    cmd = [sys.executable, "-m", "nasdd", *args(proxy, None, study, trials, out)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=preexec, **pipes)


def counted(url, study):
    return [t for t in optuna.load_study(study_name=study, storage=url).get_trials() if is_counted(t)]


def assert_exactly(url, study, n):
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    done = [t for t in trials if is_counted(t)]
    assert len(done) == n and all(t.state == TrialState.COMPLETE for t in done)  # none lost, none extra
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def restart_postgres(url, down_s):
    """Stop the CI server (`.ci/postgres.sh`, open sessions cut), wait `down_s` seconds, start it again."""
    port = sqlalchemy.engine.make_url(url).port
    if not Path(f"/tmp/nasdd-pg-{port}/data").is_dir():
        pytest.skip("the PostgreSQL server was not started by .ci/postgres.sh: cannot restart it")
    env = {**os.environ, "NASDD_PG_PORT": str(port)}
    subprocess.run(["bash", ".ci/postgres.sh", "restart", str(down_s)], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip


def wait_counted(url, study, n, procs, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if len(counted(url, study)) >= n:
                return
        except KeyError:  # study not created yet
            pass
        assert any(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)
    raise AssertionError(f"{study} never held {n} trials")


def finish(procs, rerun):
    """Wait for the workers; each either finished or exited with one line saying to rerun (then it is rerun)."""
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            line = one_line_error(err)
            assert p.returncode == 2 and "rerun the same command" in line, err
            again = rerun()
            _, err = again.communicate(timeout=600)
            assert again.returncode == 0, err


@pytest.mark.slow  # worker processes around a server restart: 107 s at 1-min load 11 on 2 cores
@pytest.mark.postgres
def test_two_workers_ride_through_a_postgresql_restart(proxy, tmp_path, postgres_url):
    study, n = f"restart-{os.getpid()}-{tmp_path.name[-8:]}", 8
    procs = [worker(proxy, postgres_url, study, n, tmp_path / f"w{i}") for i in range(2)]
    wait_counted(postgres_url, study, 2, procs)
    assert len(counted(postgres_url, study)) < n  # the restart lands in the middle of the study
    restart_postgres(postgres_url, down_s=2)
    finish(procs, lambda: worker(proxy, postgres_url, study, n, tmp_path / "again"))
    assert_exactly(postgres_url, study, n)


@pytest.mark.slow  # 102 s at load 11
@pytest.mark.postgres
def test_a_server_away_too_long_ends_the_worker_with_one_line_and_a_rerun_finishes(proxy, tmp_path, postgres_url):
    study, n = f"away-{os.getpid()}-{tmp_path.name[-8:]}", 5
    proc = worker(proxy, postgres_url, study, n, tmp_path / "w", NASDD_RECONNECT_S="1")
    wait_counted(postgres_url, study, 1, [proc])
    restart_postgres(postgres_url, down_s=6)  # longer than the worker's 1 s reconnect window
    _, err = proc.communicate(timeout=600)
    line = one_line_error(err)
    assert proc.returncode == 2 and "postgres:***@" in line and "rerun the same command to resume" in line
    again = worker(proxy, postgres_url, study, n, tmp_path / "w")
    assert again.communicate(timeout=600) and again.returncode == 0
    assert_exactly(postgres_url, study, n)


@pytest.mark.slow  # a worker process that trains until the disk is full: 57 s at load 17
def test_sqlite_on_a_full_disk_exits_with_one_line_and_a_rerun_finishes(proxy, tmp_path):
    """A full disk, simulated by a file-size limit just above the study file (writes then fail, as on a full
    file system): the worker exits with one line; with space again the same command finishes the study."""
    out, study = tmp_path / "out", "full"
    assert main(args(proxy, None, study, 1, out)) == 0
    limit = (out / "study.db").stat().st_size + 3 * 4096

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = worker(proxy, None, study, 30, out, preexec=small_disk)
    _, err = full.communicate(timeout=600)
    line = one_line_error(err)
    assert full.returncode == 2 and "in the --out folder failed" in line and "rerun the same command" in line
    url = f"sqlite:///{out / 'study.db'}"
    held = len(counted(url, study))
    assert 1 <= held < 30
    assert main(args(proxy, None, study, held + 2, out)) == 0
    assert_exactly(url, study, held + 2)


def test_journal_cut_off_mid_line_is_repaired_and_a_damaged_line_refused(proxy, tmp_path, capsys):
    log = tmp_path / "study.log"
    assert main(args(proxy, f"journal:{log}", "j", 2, tmp_path / "out")) == 0
    with open(log, "ab") as f:  # a worker killed (or a disk filled) in the middle of writing a record
        f.write(b'{"op_code": 5, "worker_id": "host-1234", "trial_id": 1, "sta')
    capsys.readouterr()
    assert main(args(proxy, f"journal:{log}", "j", 3, tmp_path / "out")) == 0
    line = one_line_error(capsys.readouterr().err)
    assert "dropped a record cut off mid-write" in line
    backend = optuna.storages.journal.JournalFileBackend(str(log))
    url = optuna.storages.JournalStorage(backend)
    assert_exactly(url, "j", 3)

    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join([*lines[:3], b'{"op_code": 4, "trial_\n', *lines[3:]]))  # damage inside the file
    assert main(args(proxy, f"journal:{log}", "j", 4, tmp_path / "out")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "is damaged at line 4" in line


def validate_process(proxy, url, out):
    """`nasdd validate` in a subprocess on `url` (through NASDD_STORAGE), as tests/validate/test_workers.py runs it."""
    a = ["validate", "--dataset", "digits", "--space", TINY, "--pool", "4", "--proxies", str(proxy), "--out", str(out)]
    a += ["--peers", "params,random", "--truth-seeds", "2", "--truth-recipe", "full,epochs=2"]
    a += ["--proxy-recipe", "proxy,epochs=20", "--resamples", "100", "--quiet", "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "NASDD_STORAGE": url}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen([sys.executable, "-m", "nasdd", *a], cwd=ROOT, env=env, **pipes)


def results(url):
    """(study, job) of every recorded result in the storage."""
    return [
        (s.study_name, t.user_attrs["job"])
        for s in optuna.get_all_study_summaries(url)
        for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials(deepcopy=False)
        if "result" in t.user_attrs
    ]


@pytest.mark.slow  # a validation process around a server restart: 54 s at load ~15
@pytest.mark.postgres
def test_a_validation_rides_through_a_postgresql_restart(digits, tmp_path, postgres_url):
    from collections import Counter

    from nasdd.distill import distill

    proxy = distill(digits, "random", ipc=5, seed=0).save(tmp_path / "proxy")
    name = f"restart_{os.getpid()}_{tmp_path.name[-8:].lower()}".replace("-", "_")
    with sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as c:  # a fresh database
        c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = sqlalchemy.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    proc = validate_process(proxy, url, tmp_path / "v")
    deadline = time.time() + 300
    while not [r for r in _try(results, url) if "/zerocost-" not in r[0]]:  # a training recorded
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.3)
    assert proc.poll() is None  # the restart lands in the middle of the validation
    restart_postgres(url, down_s=2)
    finish([proc], lambda: validate_process(proxy, url, tmp_path / "v"))
    per_job = Counter(r for r in results(url) if "/zerocost-" not in r[0])
    assert per_job and max(per_job.values()) == 1  # every training recorded once
    assert (tmp_path / "v" / "per_arch.csv").exists() and (tmp_path / "v" / "summary.csv").exists()


def _try(f, *a):
    try:
        return f(*a)
    except Exception:  # tables not created yet
        return []
