"""`--strategy prescreen`: score candidates with a cheap signal, then synchronous successive halving on the real data.

1. Candidates: `trials` distinct architectures drawn by Optuna's sampler (random, qmc or grid; seeded, so
   every worker draws the same list; all of a finite space no larger than `trials`), or a given list (`--archs`).
2. Pre-screen: each candidate gets the cheap score `signal`: a zero-cost score (`snip`, `synflow`, ...;
   `nasdd list peers`) or `proxy` (trained on the proxy with the search recipe, scored on real val).
3. Halving: the rest of `--budget` (sample-gradients) buys epochs of the real-data recipe (`--retrain-recipe`);
   `nasdd.search.halving.plan` turns them into one synchronous bracket over the pre-screened ranking, rungs
   in epochs. A promoted candidate continues from its previous rung's checkpoint (`nasdd.train.fit`'s
   resume; weights-only files under `<out>/checkpoints`) and is charged only the extra epochs.
4. Winner: the best val accuracy after the last rung; its test accuracy is reported, never used.

Every score and every rung training is one Optuna trial (ask and tell) in the study: user attributes `job`
(`score:<arch key>` or `rung:<arch key>:<from>-<to>`), `arch`, `sample_grads`, the val accuracy as the value
(and as the intermediate value at the rung's epoch). Workers sharing the study claim jobs by trial: of two
trials claiming one job the younger yields; a job whose worker died (pid on this host, or heartbeat with an
RDB storage) is claimed again and redone from the last checkpoint; a rerun trains nothing already recorded.
"""

from __future__ import annotations

import math
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pandas as pd
import torch
from optuna.storages._heartbeat import get_heartbeat_thread  # what optimize() uses; ask-and-tell has no public one
from optuna.trial import FrozenTrial, TrialState

from nasdd.arch import ArchSpec
from nasdd.cost import trial_cost
from nasdd.data import DatasetBundle
from nasdd.errors import NasddError, unknown_name
from nasdd.search import halving
from nasdd.search.halving import Bracket, Job
from nasdd.search.workers import _orphaned, fail_dead_trials, pin
from nasdd.spaces import SearchSpace
from nasdd.storage import worker_id
from nasdd.train import Monitor, TrainRecipe, build_seeded, evaluate, fit, train_arch
from nasdd.utils import atomic_path, ensure_dir, load_untrusted, stable_hash, write_json

if TYPE_CHECKING:
    from nasdd.search.objective import TrainingData

CANDIDATE_SAMPLERS = ("random", "qmc", "grid")  # value-independent: every worker draws the same candidates
ZC_BATCH = 64  # images in the zero-cost scores' batch (their cost in sample-gradients at most)


@dataclass(frozen=True)
class Settings:
    """What the strategy needs beyond the search's own arguments (parsed once, in `nasdd.search.study`)."""

    signal: str  # a zero-cost score name, or "proxy"
    candidates: int
    budget: int  # sample-gradients: pre-screen plus halving
    recipe: TrainRecipe  # the real-data recipe; rungs are its epochs
    proxy_recipe: TrainRecipe  # the pre-screen training with signal "proxy"
    eta: int = 3
    seed: int = 0
    archs: tuple[ArchSpec, ...] | None = None  # the candidates, when given (`--archs`), instead of drawn ones
    sampler: str = "random"  # draws the candidates (random, qmc or grid) when `archs` is None


def signals() -> list[str]:
    from nasdd.validate.zerocost import SCORES

    return ["proxy", *SCORES.names()]


def draw_candidates(space: SearchSpace, n: int, *, sampler: str, seed: int) -> list[ArchSpec]:
    """`n` distinct architectures from Optuna's `sampler` (fewer when the space runs out)."""
    if sampler not in CANDIDATE_SAMPLERS:
        raise NasddError(
            f"`strategy` prescreen draws candidates with `sampler` random, qmc or grid, not {sampler!r}",
            params=("strategy", "sampler"),
        )
    if space.finite and space.size <= n:
        return sorted(space.enumerate(), key=ArchSpec.key)
    from nasdd.search.samplers import make_sampler

    study = optuna.create_study(sampler=make_sampler(sampler, space, seed=seed, trials=n, multi=False))
    seen: dict[str, ArchSpec] = {}
    for _ in range(50 * n):
        trial = study.ask()
        spec = space.suggest(trial)
        study.tell(trial, 0.0)
        seen.setdefault(spec.key(), spec)
        if len(seen) == n:
            break
    return list(seen.values())


def epoch_grads(recipe: TrainRecipe, n_train: int) -> int:
    """Sample-gradients of one epoch (every image once): the unit the budget buys rungs in."""
    if recipe.steps is not None:
        raise NasddError(
            "`strategy` prescreen needs a `retrain_recipe` that counts epochs (its rungs), not steps",
            params=("strategy", "retrain_recipe"),
        )
    return n_train


def make_plan(s: Settings, n_candidates: int, n_train: int, per_candidate: int) -> tuple[Bracket, int]:
    """The bracket the budget buys after the pre-screen, and the pre-screen's (estimated) cost."""
    screen = n_candidates * per_candidate
    epochs = (s.budget - screen) // epoch_grads(s.recipe, n_train)
    if epochs < 1:
        raise NasddError(
            f"`budget` {s.budget:,} sample-gradients is below the pre-screen ({screen:,}) plus one rung "
            f"(1 epoch of one candidate: {epoch_grads(s.recipe, n_train):,}); raise `budget` or lower `trials`",
            params=("budget", "trials"),
        )
    return halving.plan(int(epochs), s.recipe.epochs, eta=s.eta, candidates=n_candidates), screen


# ---- the job loop: claims through the study, injected work -------------------------------------------------


def job_id(job: Job | str) -> str:
    return f"score:{job}" if isinstance(job, str) else f"rung:{job.arch}:{job.start}-{job.epochs}"


def recorded(trials: list[FrozenTrial]) -> dict[str, FrozenTrial]:
    """Finished jobs: complete, or failed with a recorded reason (a failed training is a result: NaN)."""
    done: dict[str, FrozenTrial] = {}
    for t in trials:
        ok = t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)
        if ok and "job" in t.user_attrs:
            done.setdefault(t.user_attrs["job"], t)
    return done


def value(t: FrozenTrial) -> float:
    return t.value if t.state == TrialState.COMPLETE and t.value is not None else math.nan


def _held(t: FrozenTrial) -> bool:
    return t.state == TrialState.RUNNING and "job" in t.user_attrs and not _orphaned(t)


def work(
    study: optuna.Study,
    needed: Callable[[dict[str, FrozenTrial]], list[str] | None],
    do: Callable[[str, optuna.Trial], float],
    *,
    poll: float = 2.0,
    on_done: Callable[[FrozenTrial], None] | None = None,
) -> dict[str, FrozenTrial]:
    """Claim and run jobs until `needed(recorded jobs)` returns None (finished); [] means wait for others.

    `do(job, trial)` runs one job and returns its value (raise CandidateFailed-like errors as NasddError
    after setting `fail_reason`). Returns the recorded jobs."""
    while True:
        fail_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        done = recorded(trials)
        want = needed(done)
        if want is None:
            return done
        busy = {t.user_attrs["job"] for t in trials if _held(t)}
        free = [j for j in want if j not in busy]
        if not free:
            time.sleep(poll)
            continue
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(): we beat below
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        token = uuid.uuid4().hex
        trial.set_user_attr("job", free[0])
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("claim", token)
        time.sleep(min(poll, 0.1))  # SQLite can hand one waiting trial to two workers: the last claim keeps it
        if study._storage.get_trial(trial._trial_id).user_attrs.get("claim") != token:
            continue  # the other worker runs (and tells) this trial
        rivals = _rivals(study, trial.number, free[0], poll)
        if rivals:  # another worker claimed it first: yield, uncounted
            trial.set_user_attr("surplus", f"job {free[0]} claimed by trial {rivals[0].number}")
            study.tell(trial, state=TrialState.FAIL)
            continue
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):  # RDB storages: a dead worker goes stale
                v = do(free[0], trial)
        except _JobFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            study.tell(trial, state=TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)  # not recorded: the job is claimed again
            raise
        else:
            study.tell(trial, v)
        if on_done is not None:
            on_done(study.get_trials(deepcopy=False)[trial.number])


def _rivals(study: optuna.Study, number: int, job: str, poll: float) -> list[FrozenTrial]:
    """Other trials holding `job`: recorded ones, or older live claims. An older trial not yet claimed may be
    claiming the same job: wait (a moment, or until it is orphaned) to see which. An older trial still shown
    WAITING (a dead worker's retry) is being taken by another worker (`ask` pops the oldest waiting trial, so it
    was not waiting when this one was made): wait for it too, or it could claim this job unseen."""
    while True:
        now = study.get_trials(deepcopy=False)
        older = [t for t in now if t.number < number]
        unclaimed = (TrialState.RUNNING, TrialState.WAITING)
        if any(t.state in unclaimed and "job" not in t.user_attrs and not _orphaned(t) for t in older):
            time.sleep(min(poll, 0.1))
            continue
        same = [t for t in now if t.number != number and t.user_attrs.get("job") == job]
        return [t for t in same if (t.number < number and _held(t)) or recorded([t])]


class _JobFailed(Exception):
    """A candidate that could not be scored or trained: recorded as a NaN result."""


# ---- real-data training with checkpoints --------------------------------------------------------------------


class _Reached(Exception):
    def __init__(self, acc: float) -> None:
        self.acc = acc


def checkpoint_path(folder: Path, arch: str, recipe: TrainRecipe, seed: int, epochs: int) -> Path:
    return folder / f"{arch}-{recipe.key()}-s{seed}-e{epochs}.pt"


def train_rung(
    job: Job,
    spec: ArchSpec,
    bundle: DatasetBundle,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device,
    folder: Path,
) -> dict:
    """Continue `spec`'s training from `job.start` epochs (its checkpoint) to `job.epochs`; save that checkpoint.

    Returns val accuracy, the sample-gradients of the extra epochs only, seconds and (at the end) test accuracy."""
    shape = (bundle.channels, bundle.image_size, bundle.image_size)
    model = build_seeded(spec, shape, bundle.num_classes, seed)
    state = None
    if job.start:
        path = checkpoint_path(folder, job.arch, recipe, seed, job.start)
        if not path.exists():
            raise NasddError(f"checkpoint {path} is missing; a rung continues from it (keep the study folder)")
        state = load_untrusted(path, what="rung checkpoint", remedy="delete it to retrain that rung")
    before = int(state["sample_grads"]) if state else 0
    saved: dict = {}
    start = time.perf_counter()
    try:
        res = fit(
            model, bundle.x_train, bundle.y_train, recipe, seed=seed, device=device,
            eval_data=(bundle.x_val, bundle.y_val), resume=state,
            monitor=Monitor(eval_every=job.epochs, on_eval=lambda unit, acc: _stop(unit, acc, job.epochs),
                            on_checkpoint=lambda s: saved.update(s)),
        )  # fmt: skip
    except _Reached as r:
        with atomic_path(checkpoint_path(folder, job.arch, recipe, seed, job.epochs)) as tmp:
            torch.save(saved, tmp)
        return {"val_accuracy": r.acc, "sample_grads": int(saved["sample_grads"]) - before,
                "seconds": time.perf_counter() - start}  # fmt: skip
    out = {"val_accuracy": res.accuracy if res.ok else math.nan, "sample_grads": res.sample_grads - before,
           "seconds": res.seconds, "error": res.error or ""}  # fmt: skip
    if res.ok and job.epochs == recipe.epochs:
        out["test_accuracy"] = evaluate(model, bundle.x_test, bundle.y_test, device=device)[0]
    return out


def _stop(unit: int, acc: float, epochs: int) -> None:
    if unit >= epochs:
        raise _Reached(acc)


def score_candidate(
    spec: ArchSpec, signal: str, bundle: DatasetBundle, *, proxy: TrainingData, s: Settings, device: torch.device
) -> dict:
    """The cheap score of one candidate and its cost."""
    start = time.perf_counter()
    if signal == "proxy":
        res = train_arch(spec, proxy.x, proxy.y, s.proxy_recipe, num_classes=bundle.num_classes, seed=s.seed,
                         device=device, eval_data=(proxy.x_val, proxy.y_val))  # fmt: skip
        return {"score": res.accuracy if res.ok else math.nan, "sample_grads": res.sample_grads,
                "seconds": res.seconds, "error": res.error or ""}  # fmt: skip
    from nasdd.validate.zerocost import zero_cost

    r = zero_cost(signal, spec, bundle, seed=s.seed, batch_size=ZC_BATCH, device=device)
    return {"score": r.score, "sample_grads": r.sample_grads, "seconds": time.perf_counter() - start, "error": ""}


# ---- the strategy ---------------------------------------------------------------------------------------------


def prescreen(
    study: optuna.Study,
    space: SearchSpace,
    bundle: DatasetBundle,
    s: Settings,
    *,
    proxy: TrainingData,
    device: torch.device,
    out: Path,
    show_progress: bool = True,
) -> dict:
    """Run (or resume, or join) the strategy in `study`; write halving.csv, winner.json and budget.json;
    return the winner."""
    if s.signal not in signals():
        raise unknown_name("pre-screen signal", s.signal, signals())
    cands = list(s.archs) if s.archs else draw_candidates(space, s.candidates, sampler=s.sampler, seed=s.seed)
    by_key = {c.key(): c for c in cands}
    per = ZC_BATCH if s.signal != "proxy" else trial_cost(s.proxy_recipe, len(proxy.x))
    bracket, screen = make_plan(s, len(cands), len(bundle.x_train), per)
    pinned = {
        "strategy": "prescreen",
        "signal": s.signal,
        "candidates": stable_hash(sorted(by_key)),
        "bracket": bracket.describe(),
        "recipe": s.recipe.key(),
        "seed": s.seed,
        "budget": s.budget,
    }
    _pin(study, pinned)
    ckpts = ensure_dir(out / "checkpoints")
    keys = [c.key() for c in cands]

    def ranked(done: dict[str, FrozenTrial]) -> list[str] | None:
        scores = {k: value(done[job_id(k)]) for k in keys if job_id(k) in done}
        if len(scores) < len(keys):
            return None
        return sorted(keys, key=lambda k: (math.isnan(scores[k]), -scores[k] if not math.isnan(scores[k]) else 0))

    def results(done: dict[str, FrozenTrial]) -> dict[tuple[str, int], float]:
        return {(t.user_attrs["arch_key"], t.user_attrs["epochs"]): value(t)
                for j, t in done.items() if j.startswith("rung:")}  # fmt: skip

    def needed(done: dict[str, FrozenTrial]) -> list[str] | None:
        order = ranked(done)
        if order is None:
            return [job_id(k) for k in keys if job_id(k) not in done]
        jobs = halving.next_jobs(bracket, order, results(done))
        return [job_id(j) for j in jobs] or None

    def do(job: str, trial: optuna.Trial) -> float:
        kind, arch, *rest = job.split(":")
        spec = by_key[arch]
        trial.set_user_attr("arch", spec.to_json())
        trial.set_user_attr("arch_key", arch)
        if kind == "score":
            r = score_candidate(spec, s.signal, bundle, proxy=proxy, s=s, device=device)
            trial.set_user_attr("kind", "score")
            key = "score"
        else:
            a, b = (int(v) for v in rest[0].split("-"))
            job_ = Job(arch, a, b)
            trial.set_user_attr("kind", "rung")
            trial.set_user_attr("start", a)
            trial.set_user_attr("epochs", b)
            r = train_rung(job_, spec, bundle, s.recipe, seed=s.seed, device=device, folder=ckpts)
            key = "val_accuracy"
            if not math.isnan(r[key]):
                trial.report(r[key], b)
        for k, v in r.items():
            trial.set_user_attr(k, v)
        if math.isnan(r[key]):
            raise _JobFailed(r.get("error") or "failed")
        return float(r[key])

    def shown(t: FrozenTrial) -> None:
        if show_progress:
            a = t.user_attrs
            what = f"val {t.value:.4f} at {a.get('epochs')} ep" if a.get("kind") == "rung" and t.value else ""
            what = what or (f"score {t.value:.4g}" if t.value is not None else a.get("fail_reason", "failed"))
            print(f"[prescreen] {a.get('job')} {what} ({a.get('seconds', 0):.1f} s)", flush=True)

    done = work(study, needed, do, on_done=shown)
    return _write(done, bracket, ranked(done) or keys, results(done), by_key, s, screen, out)


def _pin(study: optuna.Study, settings: dict) -> None:
    pin(study, "prescreen", settings, f"study {study.study_name!r} was run with other prescreen settings")


def _write(
    done: dict[str, FrozenTrial], bracket: Bracket, order: list[str], res: halving.Results, by_key: dict[str, ArchSpec],
    s: Settings, screen: int, out: Path,
) -> dict:  # fmt: skip
    rows = [{"job": j, "kind": t.user_attrs.get("kind"), "arch_key": t.user_attrs.get("arch_key"),
             "rank": order.index(t.user_attrs["arch_key"]) + 1, "start": t.user_attrs.get("start", ""),
             "epochs": t.user_attrs.get("epochs", ""), "value": value(t),
             "sample_grads": t.user_attrs.get("sample_grads", 0), "seconds": round(t.user_attrs.get("seconds", 0), 2),
             "test_accuracy": t.user_attrs.get("test_accuracy", ""), "trial": t.number,
             "name": str(by_key[t.user_attrs["arch_key"]]), "arch": by_key[t.user_attrs["arch_key"]].to_json()}
            for j, t in done.items()]  # fmt: skip
    df = pd.DataFrame(rows).sort_values(["kind", "epochs", "rank"], key=lambda c: c.astype(str))
    with atomic_path(out / "halving.csv") as tmp:
        df.to_csv(tmp, index=False)
    w = halving.winner(bracket, order, res)
    assert w is not None  # written once every job is done
    final = done[job_id(Job(w, bracket.rungs[-2] if len(bracket.rungs) > 1 else 0, bracket.rungs[-1]))]
    win = {"arch": str(by_key[w]), "arch_key": w, "rank": order.index(w) + 1, "val_accuracy": value(final),
           "epochs": bracket.rungs[-1], "test_accuracy": final.user_attrs.get("test_accuracy"),
           "bracket": bracket.describe()}  # fmt: skip
    write_json(out / "winner.json", win)
    last = df[(df.kind == "rung") & (df.epochs == bracket.rungs[-1])].sort_values(
        ["value", "rank"], ascending=[False, True]
    )
    with atomic_path(out / "top.csv") as tmp:  # what `nasdd report` shows as the search's winner
        last.rename(columns={"value": "accuracy"})[["arch", "accuracy", "rank", "epochs", "test_accuracy"]].to_csv(
            tmp, index=False
        )
    spent_screen = int(df.loc[df.kind == "score", "sample_grads"].sum())
    spent_rungs = int(df.loc[df.kind == "rung", "sample_grads"].sum())
    spent = spent_screen + spent_rungs
    write_json(out / "budget.json", {"budget": s.budget, "prescreen_estimate": screen, "spent_prescreen": spent_screen,
               "spent_halving": spent_rungs, "spent": spent, "left": s.budget - spent,
               "settings": asdict(s) | {"recipe": s.recipe.key()}})  # fmt: skip
    return win
