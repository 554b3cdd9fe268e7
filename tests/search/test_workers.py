"""Many `nasdd search` workers on one storage: sharing, SIGKILL (heartbeat / dead pid) and SIGINT."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nasdd import search as S

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")
RECIPE = "proxy,epochs=400"  # about a second per trial: long enough to be killed in the middle of one
SLOW = ("--recipe", "proxy,epochs=2000")  # ~5 s per trial: a SIGINT lands inside one even on a loaded CPU
# A worker in a subprocess; `host` pretends it runs on another machine, so only heartbeats can tell it died.
WORKER = "import socket, sys; socket.gethostname = lambda: {host!r}; from nasdd.cli import main; sys.exit(main())"


def worker(proxy, storage, study, trials, *extra, host=None, out=None):
    args = ["search", "--space", TINY, "--proxy", str(proxy), "--dataset", "digits", "--study", study]
    args += ["--trials", str(trials), "--storage", storage, "--recipe", RECIPE, "--sampler", "random", "--quiet"]
    args += ["--threads", "1", "--device", "cpu", "--heartbeat", "1", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = ["-c", WORKER.format(host=host)] if host else ["-m", "nasdd"]
    argv = [sys.executable, *code, *args]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(argv, cwd=ROOT, env=env, preexec_fn=default_sigint, **pipes)


def default_sigint() -> None:
    """A shell without job control starts background jobs (CI) with SIGINT ignored; a child inherits that
    and Python then installs no KeyboardInterrupt handler. Give the worker the terminal's default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def storage_url(kind, tmp_path, postgres_url):
    return f"journal:{tmp_path / 'study.log'}" if kind == "journal" else postgres_url


def load(url, name):
    if url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:"))
        return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))
    return optuna.load_study(study_name=name, storage=url)


def wait_running(url, name, proc, timeout=120):
    """Wait until `proc` is training a trial; return that trial."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            running = load(url, name).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # study not created yet
            running = []
        mine = [
            t
            for t in running
            if str(t.user_attrs.get("worker", "")).endswith(f":{proc.pid}") and "arch" in t.user_attrs
        ]
        if mine:
            time.sleep(0.3)  # inside the training loop
            return mine[0]
        time.sleep(0.1)
    raise AssertionError("the worker never started a trial")


def assert_exactly(study, n):
    counted = [t for t in study.get_trials() if S.is_counted(t)]
    assert len(counted) == n
    assert all(t.state == TrialState.COMPLETE for t in counted)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    return counted


@pytest.mark.postgres
def test_three_workers_finish_one_study_on_postgresql(proxy, tmp_path, postgres_url):
    name = f"three-{os.getpid()}-{tmp_path.name}"
    procs = [worker(proxy, postgres_url, name, 6, "--seed", str(i), out=tmp_path / f"w{i}") for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    done = assert_exactly(load(postgres_url, name), 6)
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # the work was shared
    assert len(done) == len({t.number for t in done})


@pytest.mark.slow  # ~40 s; a killed process resuming is covered fast by test_study.py, requeueing by the SIGINT test
@pytest.mark.parametrize("kind", ["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_killed_worker_has_its_trial_redone(proxy, tmp_path, kind, request):
    url = storage_url(kind, tmp_path, request.getfixturevalue("postgres_url") if kind == "postgres" else None)
    name = f"kill-{os.getpid()}-{tmp_path.name}"
    # on PostgreSQL the victim "runs on another host": no pid check, only its stopped heartbeat reveals it
    victim = worker(proxy, url, name, 4, host="elsewhere" if kind == "postgres" else None, out=tmp_path / "v")
    try:
        killed = wait_running(url, name, victim)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
    rescuer = worker(proxy, url, name, 4, out=tmp_path / "r")
    _, err = rescuer.communicate(timeout=300)
    assert rescuer.returncode == 0, err
    study = load(url, name)
    done = assert_exactly(study, 4)
    assert study.trials[killed.number].state == TrialState.FAIL
    redo = [t for t in done if t.system_attrs.get("failed_trial") == killed.number]
    assert len(redo) == 1 and redo[0].params == killed.params  # the same architecture, trained again
    assert redo[0].user_attrs["worker"].endswith(f":{rescuer.pid}")


def test_sigint_stops_a_worker_cleanly(proxy, tmp_path):
    url = f"journal:{tmp_path / 'study.log'}"
    proc = worker(proxy, url, "int", 4, *SLOW, out=tmp_path / "o")
    running = wait_running(url, "int", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == (
        f"nasdd search: interrupted: trial {running.number} marked failed and queued again; "
        "rerun the same command to finish the study"
    )
    study = load(url, "int")
    assert study.trials[running.number].state == TrialState.FAIL
    assert [t.system_attrs["failed_trial"] for t in study.get_trials(states=(TrialState.WAITING,))] == [running.number]
    rerun = worker(proxy, url, "int", 4, *SLOW, out=tmp_path / "o")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert_exactly(load(url, "int"), 4)
