"""`nasdd search --strategy prescreen`: continuation of promoted candidates, shared workers, resume, CLI errors."""

import json
import socket
import threading
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from nasdd import search as S
from nasdd.arch import ArchSpec
from nasdd.cli import main
from nasdd.search import prescreen as P
from nasdd.search.config import SearchConfig
from nasdd.search.halving import Job
from nasdd.storage import open_storage, sqlite_url
from nasdd.train import TrainRecipe, train_arch

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")  # 12 ConvNets
SPEC = ArchSpec.from_json('{"family":"convnet","depth":1,"width":8,"activation":"relu","normalization":"none",'
                          '"pooling":"avgpool"}')  # fmt: skip
RECIPE = TrainRecipe.parse("full,epochs=4")


def test_a_promoted_candidate_continues_its_training_and_pays_only_the_extra_epochs(digits, tmp_path):
    first = P.train_rung(
        Job(SPEC.key(), 0, 1), SPEC, digits, RECIPE, seed=0, device=torch.device("cpu"), folder=tmp_path
    )
    rest = P.train_rung(
        Job(SPEC.key(), 1, 4), SPEC, digits, RECIPE, seed=0, device=torch.device("cpu"), folder=tmp_path
    )
    n = len(digits.y_train)
    assert first["sample_grads"] == n and rest["sample_grads"] == 3 * n  # charged 1 epoch, then the 3 extra
    # the same training as one uninterrupted run of the recipe (not a restart: that would give another accuracy)
    whole = train_arch(SPEC, digits.x_train, digits.y_train, RECIPE, num_classes=digits.num_classes, seed=0,
                       device="cpu", eval_data=(digits.x_val, digits.y_val))  # fmt: skip
    assert rest["val_accuracy"] == pytest.approx(whole.accuracy, abs=1e-9)
    assert "test_accuracy" in rest
    restart = P.train_rung(Job(SPEC.key(), 0, 3), SPEC, digits, RECIPE, seed=0, device=torch.device("cpu"),
                           folder=tmp_path)  # fmt: skip
    assert restart["sample_grads"] == 3 * n


def _dead_worker() -> str:
    pid = 4_000_000  # above Linux's pid_max: no such process
    return f"{socket.gethostname()}:{pid}"


def test_a_killed_workers_job_is_finished_by_another_and_nothing_else_runs_twice(tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    study = optuna.create_study(study_name="w", storage=open_storage(url, heartbeat=None), direction="maximize")
    jobs = [f"score:{c}" for c in "abcdef"]
    killed = study.ask()  # a worker claimed job c, then died while training it
    killed.set_user_attr("worker", _dead_worker())
    killed.set_user_attr("job", "score:c")
    ran: Counter = Counter()
    lock = threading.Lock()

    def needed(done):
        left = [j for j in jobs if j not in done]
        return left or None

    def do(job, trial):
        with lock:
            ran[job] += 1
        return float(ord(job[-1]))

    def worker():
        s = optuna.load_study(study_name="w", storage=open_storage(url, heartbeat=None))
        P.work(s, needed, do, poll=0.05)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ran == Counter(jobs)  # each job once, the killed one redone once
    trials = study.get_trials(deepcopy=False)
    assert trials[killed.number].state == TrialState.FAIL
    done = P.recorded(trials)
    assert sorted(done) == sorted(jobs) and done["score:c"].number != killed.number
    assert all(t.state == TrialState.FAIL and "surplus" in t.user_attrs for t in trials
               if t.state != TrialState.COMPLETE and t.number != killed.number)  # fmt: skip


def _search(digits, tmp_path, **kw):
    kw = {"study_name": "p", "budget": 12_000, "retrain_recipe": "full,epochs=4", "sampler": "random",
          "strategy": "prescreen", **kw}  # fmt: skip
    config = SearchConfig.from_text(**kw)
    return S.search(TINY, "full", digits, config, out=tmp_path / "out", device="cpu", show_progress=False)


def test_the_strategy_spends_within_its_budget_and_a_rerun_trains_nothing(digits, tmp_path):
    study = _search(digits, tmp_path)
    out = tmp_path / "out"
    budget, win = json.loads((out / "budget.json").read_text()), json.loads((out / "winner.json").read_text())
    n = len(digits.y_train)
    assert budget["spent"] <= 12_000 and budget["left"] < n + 12 * P.ZC_BATCH  # within one 1-epoch rung
    df = pd.read_csv(out / "halving.csv")
    assert (df.kind == "score").sum() == 12  # the whole 12-member space pre-screened
    rungs = df[df.kind == "rung"]
    assert (rungs.sample_grads == (rungs.epochs - rungs.start.fillna(0)) * n).all()  # only the extra epochs
    assert win["val_accuracy"] == rungs[rungs.epochs == rungs.epochs.max()].value.max()
    before = len(study.trials)
    study = _search(digits, tmp_path)  # resumed: every job is recorded
    assert len(study.trials) == before


def test_bad_strategy_and_a_budget_below_one_rung_are_one_line(tmp_path, capsys):
    argv = ["search", "--space", TINY, "--proxy", "full", "--dataset", "digits", "--study", "c", "--quiet"]
    argv += ["--out", str(tmp_path / "cli"), "--device", "cpu", "--sampler", "random"]
    assert main([*argv, "--strategy", "halfing", "--budget", "10k"]) == 2
    err = capsys.readouterr().err
    assert (
        "unknown strategy 'halfing'; valid strategies: default, prescreen" in err and len(err.strip().splitlines()) == 1
    )
    assert main([*argv, "--strategy", "prescreen", "--budget", "1k"]) == 2
    err = capsys.readouterr().err
    assert "one rung" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--strategy", "prescreen"]) == 2
    assert "needs --budget" in capsys.readouterr().err
