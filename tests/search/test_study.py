import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from nasdd import search as S
from nasdd import storage
from nasdd.cli import main
from nasdd.distill import distill
from nasdd.distill.proxy import ProxySet
from nasdd.errors import NasddError
from nasdd.search import objective, retraining, workers
from nasdd.search.config import SearchConfig
from nasdd.spaces import load_space, parse_space
from nasdd.train import TrainRecipe

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")  # 12 ConvNets
RECIPE = "proxy,epochs=5"


def search(space, proxy, digits, *, out=None, device="auto", show_progress=True, **settings):
    """`S.search` with its settings given as command-line-style text (recipes, budget), parsed into a SearchConfig."""
    config = SearchConfig.from_text(**settings)
    return S.search(space, proxy, digits, config, out=out, device=device, show_progress=show_progress)


def run(digits, proxy, tmp_path, **kw):
    kw = {"study_name": "s", "trials": 6, "recipe": RECIPE, "out": tmp_path / "out", "show_progress": False, **kw}
    return search(TINY, proxy, digits, device="cpu", **kw)


def load(tmp_path, name="s"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")


def counted(study):
    return [t for t in study.get_trials() if S.is_counted(t)]


def count_calls(monkeypatch, before=None):
    """Count (and optionally intercept) the trainer calls the search makes."""
    calls = []
    real = objective.train_arch

    def wrapper(spec, *args, **kw):
        calls.append(spec)
        if before is not None:
            args, kw = before(len(calls), spec, args, kw)
        return real(spec, *args, **kw)

    monkeypatch.setattr(objective, "train_arch", wrapper)
    return calls


@pytest.mark.parametrize("sampler", list(S.SAMPLERS))
def test_each_sampler_completes_and_writes_outputs(digits, proxy, tmp_path, sampler):
    study = run(digits, proxy, tmp_path, sampler=sampler)
    assert len(counted(study)) == 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    out = tmp_path / "out"
    for name in ("trials.csv", "top.csv", "config.json", "history.png", "study.db"):
        assert (out / name).stat().st_size > 0, name
    assert len(pd.read_csv(out / "trials.csv")) == 6
    top = pd.read_csv(out / "top.csv")
    assert 1 <= len(top) <= 5 and top["accuracy"].is_monotonic_decreasing
    assert top["arch_key"].is_unique
    best = study.best_trial
    assert top["trial"][0] == best.number or top["accuracy"][0] == best.value
    a = best.user_attrs
    assert a["proxy_id"] == ProxySet.load(proxy).id and a["arch_key"] and json.loads(a["arch"])["family"] == "convnet"
    assert a["params"] > 0 and a["flops"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["sampler"] == sampler and config["proxy"]["train_size"] == 50


def test_scores_on_val_with_proxy_training(digits, proxy, tmp_path):
    study = run(digits, proxy, tmp_path, trials=2, sampler="random")
    for t in counted(study):
        # 5 epochs over 50 proxy images, scored on the real val split only
        if "cached_from" not in t.user_attrs:
            assert t.user_attrs["sample_grads"] == 5 * 50
        assert t.value == t.user_attrs["val_accuracy"]
        assert t.value * len(digits.y_val) == pytest.approx(round(t.value * len(digits.y_val)))


def test_resume_after_exception_runs_only_missing_trials(digits, proxy, tmp_path, monkeypatch):
    def interrupt_on_4th(n, spec, args, kw):
        if n == 4:
            raise KeyboardInterrupt
        return args, kw

    count_calls(monkeypatch, interrupt_on_4th)
    with pytest.raises(KeyboardInterrupt):
        run(digits, proxy, tmp_path, sampler="grid")  # grid: every trial a new architecture
    first = {t.number: t.datetime_complete for t in counted(load(tmp_path))}
    assert len(first) == 3
    monkeypatch.undo()
    study = run(digits, proxy, tmp_path, sampler="grid")
    done = counted(study)
    assert len(done) == 6 and len({t.number for t in done}) == 6
    assert {t.number: t.datetime_complete for t in done if t.number in first} == first  # nothing lost or redone
    assert len({t.user_attrs["arch_key"] for t in done}) == 6
    assert not study.get_trials(states=(TrialState.RUNNING,))


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "nasdd", "search", *args], cwd=ROOT, env=env, **kw)


def _wait_for(storage, name, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the worker ended early"
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.2)
            continue
        if len(counted(study)) >= n:
            return study
        time.sleep(0.1)
    raise AssertionError(f"no {n} finished trials within {timeout}s")


def _storage(path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def test_killed_process_resumes_to_exactly_n_trials(digits, proxy, tmp_path):
    log = tmp_path / "study.log"
    args = ["--space", TINY, "--proxy", str(proxy), "--dataset", "digits", "--study", "k", "--trials", "6"]
    args += ["--storage", f"journal:{log}", "--sampler", "grid", "--recipe", "proxy,epochs=150", "--quiet"]
    proc = _cli([*args, "--out", str(tmp_path / "out")], stderr=subprocess.PIPE)
    try:
        _wait_for(_storage(log), "k", 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = optuna.load_study(study_name="k", storage=_storage(log))
    kept = {t.number: t.datetime_complete for t in counted(before)}
    assert 3 <= len(kept) < 6
    study = search(TINY, str(proxy), digits, study_name="k", trials=6, storage=f"journal:{log}", sampler="grid",
                     recipe="proxy,epochs=150", out=tmp_path / "out", show_progress=False, device="cpu")  # fmt: skip
    done = counted(study)
    assert len(done) == 6 and {t.number: t.datetime_complete for t in done if t.number in kept} == kept
    assert len({t.user_attrs["arch_key"] for t in done}) == 6  # the grid went on where it stopped
    # the killed worker's trial is marked failed; one killed before it was claimed is ignored (failed after 60 s)
    assert all("worker" not in t.user_attrs for t in study.get_trials(states=(TrialState.RUNNING,)))
    assert all(not S.is_counted(t) for t in study.get_trials(states=(TrialState.FAIL,)))


@pytest.mark.slow  # ~40 s; one study shared by parallel trials: test_parallel_jobs_in_one_process (fast)
def test_two_processes_share_one_storage(digits, proxy, tmp_path):
    log = tmp_path / "shared.log"
    args = ["--space", TINY, "--proxy", str(proxy), "--dataset", "digits", "--study", "p", "--trials", "8"]
    args += [
        "--storage",
        str(log),
        "--sampler",
        "grid",
        "--recipe",
        "proxy,epochs=150",
        "--quiet",
        "--seed",
        "1",
    ]  # same order
    proc = _cli([*args, "--out", str(tmp_path / "a")], stderr=subprocess.PIPE)
    try:
        _wait_for(_storage(log), "p", 1, proc)
        kw = {"storage": str(log), "sampler": "grid", "recipe": "proxy,epochs=150", "out": tmp_path / "b", "seed": 1}
        search(TINY, str(proxy), digits, study_name="p", trials=8, show_progress=False, device="cpu", **kw)
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    finally:
        proc.kill()
    study = optuna.load_study(study_name="p", storage=_storage(log))
    done = counted(study)
    assert len(done) == 8 and len({t.user_attrs["arch_key"] for t in done}) == 8
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_new_trial_yields_to_an_older_one_being_claimed(monkeypatch):
    study = optuna.create_study()
    older, newer = study.ask(), study.ask()  # two workers created trials at once; neither claimed yet
    assert workers.busy(study, before=newer.number) == 1  # so the newer one sees no room in a study of 1
    assert workers.busy(study, before=older.number) == 0  # and the older one runs
    assert workers.busy(study) == 0  # the loop's plain count waits for the claim
    assert workers.awaited(study, heartbeat=False)  # a worker with nothing left to start waits for the claims
    monkeypatch.setattr(workers, "ORPHAN_S", -1.0)  # an unclaimed trial this old was orphaned at birth
    assert workers.busy(study, before=newer.number) == 0 and not workers.awaited(study, heartbeat=False)


def test_a_trial_orphaned_at_birth_is_waited_for_not_raced(digits, proxy, tmp_path, monkeypatch):
    log = f"journal:{tmp_path / 'study.log'}"
    kw = {"storage": log, "sampler": "grid", "recipe": RECIPE, "out": tmp_path / "out", "show_progress": False}
    search(TINY, str(proxy), digits, study_name="o", trials=3, device="cpu", **kw)
    optuna.load_study(study_name="o", storage=_storage(tmp_path / "study.log")).ask()  # its worker died at once
    monkeypatch.setattr(workers, "ORPHAN_S", 2.0)
    study = search(TINY, str(proxy), digits, study_name="o", trials=6, device="cpu", **kw)
    done = counted(study)  # no trial yielded to the orphan (each would have used up a grid point)
    assert len(done) == 6 and len({t.user_attrs["arch_key"] for t in done}) == 6
    assert len(study.trials) == 7 and not study.get_trials(states=(TrialState.RUNNING,))


def test_repeated_arch_is_served_from_cache(digits, proxy, tmp_path, monkeypatch):
    two = parse_space(
        {"family": "convnet", "params": {"depth": {"choices": [1, 2]}, "width": {"value": 4}}}, "two.yaml"
    )
    calls = count_calls(monkeypatch)
    study = search(two, str(proxy), digits, study_name="c", trials=8, sampler="random", recipe=RECIPE,
                     out=tmp_path / "out", show_progress=False, device="cpu")  # fmt: skip
    trials = counted(study)
    keys = {t.user_attrs["arch_key"] for t in trials}
    assert len(trials) == 8 and len(calls) == len(keys) <= 2
    for t in trials:
        if "cached_from" in t.user_attrs:
            origin = study.trials[t.user_attrs["cached_from"]]
            assert t.value == origin.value and t.user_attrs["arch_key"] == origin.user_attrs["arch_key"]
            assert t.user_attrs["sample_grads"] == 0 and origin.user_attrs["sample_grads"] > 0
    # another process (a fresh search call on the same storage) trains nothing it has already seen
    search(two, str(proxy), digits, study_name="c", trials=10, sampler="random", recipe=RECIPE, out=tmp_path / "out",
             show_progress=False, device="cpu")  # fmt: skip
    assert len(calls) == len(keys)
    # a different recipe is a different result: trained again
    db = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    search(two, str(proxy), digits, study_name="c2", trials=1, sampler="random", recipe="proxy,epochs=6",
             storage=db, out=tmp_path / "out", show_progress=False)  # fmt: skip
    assert len(calls) == len(keys) + 1


def test_failing_candidates_are_recorded_and_search_goes_on(digits, proxy, tmp_path, monkeypatch):
    def sabotage(n, spec, args, kw):
        if spec["depth"] == 2 and spec["normalization"] == "none":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
        if spec["depth"] == 2:  # a real divergence: the trainer itself sees the NaN loss
            args = (args[0], args[1], replace(args[2], lr=1e6))
        return args, kw

    calls = count_calls(monkeypatch, sabotage)
    study = run(digits, proxy, tmp_path, trials=12, sampler="grid")
    assert len(calls) == 12 and len(counted(study)) == 12
    failed = study.get_trials(states=(TrialState.FAIL,))
    reasons = [t.user_attrs["fail_reason"] for t in failed]
    assert len(failed) == 6 and all(t.params["depth"] == 2 for t in failed)
    assert sum("out of memory" in r for r in reasons) == 2 and sum("non-finite" in r for r in reasons) == 4
    assert all("\n" not in r for r in reasons)
    top = pd.read_csv(tmp_path / "out" / "top.csv")
    assert (top["accuracy"] > 0).all() and len(top) == 5
    trials_csv = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert (trials_csv["state"] == "FAIL").sum() == 6


@pytest.mark.parametrize("objective", ["accuracy,params", "accuracy,flops"])
def test_multi_objective_returns_a_pareto_front(digits, proxy, tmp_path, objective):
    study = run(digits, proxy, tmp_path, trials=8, sampler="nsga2", objective=objective)
    front = study.best_trials
    assert front and len(study.directions) == 2
    pts = [t.values for t in counted(study)]
    for t in front:  # nothing is better in accuracy and at least as small
        assert not any(a >= t.values[0] and c <= t.values[1] and (a, c) != tuple(t.values) for a, c in pts)
    assert (tmp_path / "out" / "pareto.png").exists()
    assert pd.read_csv(tmp_path / "out" / "top.csv")["trial"][0] in {t.number for t in front}


def test_pruning_reports_intermediate_val_accuracy(digits, proxy, tmp_path):
    study = run(digits, proxy, tmp_path, trials=8, sampler="random", pruner="median", recipe="proxy,epochs=20")
    trained = [t for t in counted(study) if "cached_from" not in t.user_attrs]
    assert all(len(t.intermediate_values) >= 1 for t in trained)
    assert set(trained[0].intermediate_values) <= {2, 4, 6, 8, 10, 12, 14, 16, 18}
    with pytest.raises(NasddError, match="multi-objective"):
        run(digits, proxy, tmp_path, study_name="m", pruner="hyperband", objective="accuracy,params")


def test_soft_labels_and_learned_lr_are_used(digits, tmp_path):
    base = distill(digits, "random", ipc=2, seed=0)
    soft = torch.nn.functional.one_hot(base.labels, 10).float() * 0.9 + 0.01
    p = ProxySet(base.images, soft, base.meta, {**base.provenance, "method": "soft"}, lr=0.05)
    study = search(TINY, p, digits, study_name="soft", trials=2, recipe=RECIPE, out=tmp_path / "out",
                     show_progress=False, device="cpu")  # fmt: skip
    assert len(counted(study)) == 2 and study.best_trial.user_attrs["proxy_id"] == p.id
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["recipe"]["lr"] == 0.05 and config["proxy"]["provenance"]["method"] == "soft"


def test_retrain_top_names_a_winner_once(digits, proxy, tmp_path, monkeypatch):
    study = run(digits, proxy, tmp_path, trials=4, sampler="random", retrain_top=2, retrain_recipe="full,epochs=1")
    df = pd.read_csv(tmp_path / "out" / "retrain.csv")
    assert len(df) == 2 and df["winner"].sum() == 1
    assert df.loc[df["winner"], "val_accuracy"].item() == df["val_accuracy"].max()
    assert df["test_accuracy"].between(0, 1).all() and (df["sample_grads"] == len(digits.y_train)).all()
    fits = []
    monkeypatch.setattr(retraining, "fit", lambda *a, **k: fits.append(1))
    again = S.retrain(study, digits, 2, TrainRecipe.parse("full,epochs=1"), device="cpu", show_progress=False)
    assert not fits and again["val_accuracy"].tolist() == df["val_accuracy"].tolist()


def test_cli_search_and_errors(digits, proxy, tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["search", "--space", TINY, "--proxy", "full", "--dataset", "digits", "--study", "f", "--trials", "3"]
    base += ["--out", str(out), "--quiet", "--device", "cpu"]
    argv = [*base, "--recipe", "full,epochs=1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3 finished trials" in text and "best: trial" in text
    assert json.loads((out / "config.json").read_text())["proxy"]["id"].startswith("full-")
    assert main([*base, "--recipe", "full,epochs=2"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*argv, "--storage", "nosuchdb://x"]) == 2
    assert "cannot open storage" in capsys.readouterr().err
    assert main([*argv, "--objective", "accuracy,latency"]) == 2
    assert "valid objectives" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--sampler", "bogus"])


def test_grid_needs_a_finite_space_and_cmaes_one_objective(digits, proxy, tmp_path):
    space = load_space(TINY)
    with pytest.raises(NasddError, match="single-objective"):
        S.make_sampler("cmaes", space, seed=0, trials=6, multi=True)
    floaty = parse_space({"family": "convnet", "params": {"width": {"float": [4.0, 8.0]}}}, "f.yaml")
    with pytest.raises(NasddError, match="grid sampler needs a finite"):
        S.make_sampler("grid", floaty, seed=0, trials=6, multi=False)
    assert [n for n, _ in S.catalog()] == list(S.SAMPLERS)


def test_parallel_jobs_in_one_process(digits, proxy, tmp_path):
    study = run(digits, proxy, tmp_path, trials=6, sampler="random", jobs=2)
    done = counted(study)
    assert len(done) == 6 and not study.get_trials(states=(TrialState.RUNNING,))


@pytest.mark.postgres
def test_postgresql_storage_resumes(digits, proxy, tmp_path, postgres_url):
    name = f"pg-{tmp_path.name}-{os.getpid()}"
    search(TINY, str(proxy), digits, study_name=name, trials=3, storage=postgres_url, sampler="random",
             recipe=RECIPE, out=tmp_path / "out", show_progress=False, device="cpu")  # fmt: skip
    study = search(TINY, str(proxy), digits, study_name=name, trials=5, storage=postgres_url, sampler="random",
                     recipe=RECIPE, out=tmp_path / "out", show_progress=False, device="cpu")  # fmt: skip
    assert len(counted(optuna.load_study(study_name=name, storage=postgres_url))) == 5 == len(counted(study))
    assert (tmp_path / "out" / "trials.csv").exists() and not (tmp_path / "out" / "study.db").exists()


def test_whitened_proxy_scores_on_transformed_val(digits):
    base = distill(digits, "random", ipc=1, seed=0)
    d = digits.x_val[0].numel()
    p = ProxySet(base.images, base.labels, base.meta, base.provenance, zca=2 * torch.eye(d))
    data = S.training_data(p, digits, torch.device("cpu"))
    assert torch.allclose(data.x_val, 2 * digits.x_val) and torch.equal(data.x, base.images)
    full = S.training_data("full", digits, torch.device("cpu"))
    assert len(full.x) == len(digits.y_train) and full.proxy_id == f"full-{digits.key}" and full.lr is None


def test_progress_prints_one_line_per_finished_trial_off_a_terminal(digits, proxy, tmp_path, capsys):
    run(digits, proxy, tmp_path, trials=3, sampler="grid", show_progress=True)
    lines = capsys.readouterr().out.splitlines()  # captured: not a terminal
    assert len(lines) == 3 and all(line.startswith(f"trial {i} val ") for i, line in enumerate(lines))
    assert "ETA" in lines[0] and lines[-1].endswith("3/3 finished, best " + lines[-1].rsplit(" ", 1)[-1])
    run(digits, proxy, tmp_path, study_name="q", trials=1, sampler="grid", show_progress=False)
    assert capsys.readouterr().out == ""


def test_an_interrupted_trial_is_queued_again_only_until_its_last_retry():
    for history, queued in (([], True), (list(range(100, 100 + workers.MAX_RETRY)), False)):
        study = optuna.create_study()
        trial = study.ask()
        trial.set_user_attr("worker", storage.worker_id())
        study._storage.set_trial_system_attr(trial._trial_id, "retry_history", history)
        text = workers.interrupted(study)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert study.trials[0].state == TrialState.FAIL and len(waiting) == queued
        assert ("queued again;" in text) == queued and ("not queued again" in text) != queued


def test_trials_on_one_host_share_the_torch_threads():
    study = optuna.create_study()
    for _ in range(2):
        study.ask().set_user_attr("worker", storage.worker_id())  # two trials running here (e.g. --jobs 2)
    before = torch.get_num_threads()
    try:
        shared = objective.Objective(*[None] * 8, threads=4, share_threads=True)
        shared._set_threads(study.get_trials())
        assert torch.get_num_threads() == 2
        objective.Objective(*[None] * 8, threads=3)._set_threads(study.get_trials())
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
