"""The search: open (or join) the study, run trials until it holds `trials` finished ones, write outputs."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nasdd import __version__
from nasdd.cost import SearchBudget, distill_cost, parse_grads, trial_cost
from nasdd.data import DatasetBundle, load_dataset
from nasdd.errors import NasddError, unknown_name
from nasdd.layout import RunLayout
from nasdd.search.objective import CandidateFailed, Objective, Surplus, TrainingData, training_data
from nasdd.search.outputs import TrialProgress, write_outputs
from nasdd.search.retraining import retrain
from nasdd.search.samplers import OBJECTIVES, make_pruner, make_sampler, parse_objective, report_every
from nasdd.search.strategies import check as check_strategy
from nasdd.search.workers import (
    HEARTBEAT_S,
    awaited,
    counted_trials,
    fail_dead_trials,
    holding,
    interrupted,
    is_counted,
    retry_trial,
)
from nasdd.spaces import SearchSpace, load_space
from nasdd.storage import masked, open_storage, sqlite_url
from nasdd.train import TrainRecipe, with_learned_lr
from nasdd.utils import ensure_dir, resolve_device, write_json


def _default_recipe(proxy: Any) -> str:
    return "full" if isinstance(proxy, str) and proxy == "full" else "proxy"


def _fingerprint(
    space: SearchSpace, bundle: DatasetBundle, data: TrainingData, recipe: TrainRecipe, objectives: list[str]
) -> dict:
    """What a resumed or joining worker must share with the study (the seed may differ per worker)."""
    return {
        "space": space.name,
        "family": space.family,
        "dataset": bundle.key,
        "proxy_id": data.proxy_id,
        "recipe_key": recipe.key(),
        "objective": ",".join(objectives),
    }


def search(
    space: SearchSpace | str,
    proxy: Any,
    bundle: DatasetBundle | str,
    *,
    study_name: str,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    sampler: str = "tpe",
    pruner: str = "none",
    objective: str = "accuracy",
    jobs: int = 1,
    seed: int = 0,
    top: int = 5,
    recipe: str | TrainRecipe | None = None,
    retrain_top: int = 0,
    retrain_recipe: str | TrainRecipe = "full",
    out: str | Path | None = None,
    device: str | torch.device = "auto",
    show_progress: bool = True,
    heartbeat: int | None = HEARTBEAT_S,
    threads: int | None = None,
    budget: int | str | None = None,
    budget_includes_distill: bool = False,
    strategy: str = "default",
    prescreen: str = "snip",
    eta: int = 3,
    archs: list | None = None,
) -> optuna.Study:
    """Run (or resume) a search until the study holds `trials` finished trials (default 20) or has spent its
    `budget`; return the Optuna study.

    `proxy`: "full", a ProxySet folder or a ProxySet. `recipe`: a TrainRecipe or recipe text (default
    `proxy`, or `full` with `proxy="full"`); a learned proxy lr replaces the recipe's. Outputs go to
    `out` (default results/<study_name>): trials.csv, top.csv, PNG plots, config.json and, with
    `retrain_top`, retrain.csv. `heartbeat`: seconds between trial heartbeats in RDB storages (module doc).
    `threads`: torch threads per trial; None: torch's count shared among the trials running on this host
    (other workers' and this worker's `jobs`), so workers started side by side do not oversubscribe the cores.
    `budget`: total sample-gradients (an int or `648k`, `3.2M`, `1.5G`) for the trials of every worker, the
    retraining of the top `retrain_top` (reserved from the start) and, with `budget_includes_distill`, the
    proxy's distillation (see `nasdd.cost`); with a budget and no `trials`, only the budget stops
    the search. budget.json records the budget, what trials and retraining spent, and what is left.
    `strategy`: `default` (the above) or `prescreen` (`nasdd.search.prescreen`: `trials` candidates scored with
    the cheap signal `prescreen`, then synchronous successive halving with factor `eta` on the full training
    split with `retrain_recipe`, planned from `budget`, which it needs).
    """
    check_strategy(strategy)
    total = parse_grads(budget) if budget is not None else None
    if strategy == "prescreen":
        return _prescreen(space, proxy, bundle, study_name=study_name, storage=storage, sampler=sampler,
                          seed=seed, trials=trials, recipe=recipe, retrain_recipe=retrain_recipe, out=out,
                          device=device, show_progress=show_progress, heartbeat=heartbeat, threads=threads,
                          budget=total, signal=prescreen, eta=eta, archs=archs)  # fmt: skip
    if budget_includes_distill and total is None:
        raise NasddError("--budget-includes-distill needs --budget")
    target: float = trials if trials is not None else (math.inf if total is not None else 20)
    if target < 1 or jobs < 1 or top < 0 or retrain_top < 0:
        raise NasddError("--trials and --jobs must be >= 1, --top and --retrain-top >= 0")
    if timeout is not None and not timeout > 0:
        raise NasddError(f"--timeout must be > 0 seconds, got {timeout:g}; leave it out for no limit")
    space = load_space(space) if isinstance(space, str | Path) else space
    bundle = load_dataset(bundle) if isinstance(bundle, str) else bundle
    device = resolve_device(device)
    objectives = parse_objective(objective)
    multi = len(objectives) > 1
    out = ensure_dir(out or Path("results") / study_name)
    data = training_data(proxy, bundle, device)
    base = recipe if isinstance(recipe, TrainRecipe) else TrainRecipe.parse(recipe or _default_recipe(proxy))
    train_recipe = with_learned_lr(base, data.lr)
    resource = train_recipe.steps if train_recipe.steps is not None else train_recipe.epochs
    every = report_every(pruner, resource=resource, steps=train_recipe.steps is not None)
    rr = retrain_recipe if isinstance(retrain_recipe, TrainRecipe) else TrainRecipe.parse(retrain_recipe)
    spend = None
    if total is not None:
        reserve = retrain_top * trial_cost(rr, len(bundle.x_train))
        distill = distill_cost(data.provenance) if budget_includes_distill else 0
        spend = SearchBudget(total, trial_cost(train_recipe, len(data.x)), reserve, distill)
    _quiet_optuna()
    url = storage or sqlite_url(RunLayout(out).study_db)
    study = _open_study(
        study_name,
        url,
        pruner=make_pruner(pruner, multi=multi, resource=resource, every=every),
        directions=[OBJECTIVES[o] for o in objectives],
        fingerprint=_fingerprint(space, bundle, data, train_recipe, objectives),
        heartbeat=heartbeat,
    )
    # A resumed (or joining) worker continues the sampler's randomness instead of replaying it; the grid
    # sampler's order must be the same in every worker (it maps trial numbers to grid points).
    sampler_seed = seed if sampler == "grid" else seed + len(study.get_trials(deepcopy=False))
    expected = target if spend is None else min(target, spend.total // spend.trial)
    study.sampler = make_sampler(sampler, space, seed=sampler_seed, trials=int(expected), multi=multi)
    config = {
        "version": __version__,
        "study": study_name,
        "storage": masked(url),
        "space": {"name": space.name, "path": space.path, "size": space.size},
        "dataset": bundle.meta(),
        "proxy": {
            "id": data.proxy_id,
            "source": str(proxy) if isinstance(proxy, str | Path) else "object",
            "provenance": data.provenance,
            "train_size": len(data.x),
            "scored_on": data.scored_on,
        },
        "recipe": asdict(train_recipe),
        "sampler": sampler,
        "pruner": pruner,
        "eval_every": every,
        "objective": objectives,
        "trials": None if math.isinf(target) else target,
        "budget": None if spend is None else asdict(spend),
        "timeout": timeout,
        "jobs": jobs,
        "seed": seed,
        "sampler_seed": sampler_seed,
        "device": str(device),
        "threads": threads or "shared",
    }
    write_json(out / "config.json", config)
    torch_threads = torch.get_num_threads()
    share = threads is None and device.type == "cpu"
    run = Objective(
        space, data, train_recipe, objectives, target, seed, device, every, threads or torch_threads, share, spend
    )
    try:
        _optimize(study, run, timeout=timeout, jobs=jobs, show_progress=show_progress)
    finally:
        torch.set_num_threads(torch_threads)
    write_outputs(study, out, top)
    retrained = 0
    if retrain_top:
        df = retrain(study, bundle, retrain_top, rr, seed=seed, device=device, out=out, show_progress=show_progress)
        retrained = int(df["sample_grads"].sum()) if len(df) else 0
    if spend is not None:
        write_json(out / "budget.json", spend.summary(counted_trials(study), retrained))
    return study


def _prescreen(space, proxy, bundle, *, study_name: str, storage: str | None, sampler: str, seed: int,
               trials: int | None, recipe, retrain_recipe, out, device, show_progress: bool,
               heartbeat: int | None, threads: int | None, budget: int | None, signal: str, eta: int,
               archs: list | None) -> optuna.Study:  # fmt: skip
    """`--strategy prescreen` (module `prescreen`): settings parsed once here, the work there."""
    from nasdd.search.prescreen import Settings, prescreen, signals

    if budget is None:
        raise NasddError("--strategy prescreen needs --budget (sample-gradients): it plans its rungs from it")
    if signal not in signals():
        raise unknown_name("pre-screen signal", signal, signals())
    space = load_space(space) if isinstance(space, str | Path) else space
    bundle = load_dataset(bundle) if isinstance(bundle, str) else bundle
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    out = ensure_dir(out or Path("results") / study_name)
    data = training_data(proxy if signal == "proxy" else "full", bundle, device)
    base = recipe if isinstance(recipe, TrainRecipe) else TrainRecipe.parse(recipe or _default_recipe(proxy))
    proxy_recipe = with_learned_lr(base, data.lr)
    rr = retrain_recipe if isinstance(retrain_recipe, TrainRecipe) else TrainRecipe.parse(retrain_recipe)
    size = space.size if space.finite else math.inf
    n = len(archs) if archs else trials if trials is not None else int(min(size, 100))
    if n < 1 or eta < 2:
        raise NasddError("--trials must be >= 1 and --eta >= 2")
    settings = Settings(signal, n, budget, rr, proxy_recipe, eta, seed, tuple(archs) if archs else None)
    _quiet_optuna()
    url = storage or sqlite_url(RunLayout(out).study_db)
    study = _open_study(study_name, url, directions=["maximize"], heartbeat=heartbeat,
                        fingerprint=_fingerprint(space, bundle, data, rr, ["accuracy"]))  # fmt: skip
    write_json(out / "config.json", {"version": __version__, "study": study_name, "storage": url,
               "strategy": "prescreen", "space": space.name, "dataset": bundle.meta(), "sampler": sampler,
               "settings": asdict(settings), "device": str(device)})  # fmt: skip
    prescreen(study, space, bundle, settings, sampler=sampler, proxy=data, device=device, out=out,
              show_progress=show_progress)  # fmt: skip
    return study


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _open_study(name: str, url: str, *, fingerprint: dict, heartbeat: int | None, **kwargs: Any) -> optuna.Study:
    store = open_storage(url, heartbeat=heartbeat, on_stale=retry_trial)
    try:
        study = optuna.create_study(study_name=name, storage=store, load_if_exists=True, **kwargs)
    except ValueError as exc:
        raise NasddError(f"cannot open study {name!r}: {exc}") from exc
    old = study.user_attrs.get("nasdd")
    if old is None:
        study.set_user_attr("nasdd", fingerprint)
    elif old != fingerprint:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in fingerprint.items() if old.get(k) != v)
        raise NasddError(f"study {name!r} in this storage was made with other settings ({diff}); use a new --study")
    return study


def _optimize(study: optuna.Study, run: Objective, *, timeout: float | None, jobs: int, show_progress: bool) -> None:
    """Run trials until the study holds `run.target` counted ones or `run.budget` has no room for one more;
    wait for (or redo) other workers' trials."""
    trials = run.target
    deadline = None if timeout is None else time.monotonic() + timeout
    heartbeat = study._storage.get_heartbeat_interval() if hasattr(study._storage, "get_heartbeat_interval") else None
    poll = min(5.0, heartbeat or 5.0)
    total = None if math.isinf(trials) else int(trials)
    shown = TrialProgress(study.study_name, total, len(counted_trials(study)), show=show_progress)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        now = study.get_trials(deepcopy=False)  # one read serves the progress and the stop test
        shown.update(study, trial, [t for t in now if is_counted(t)])
        if run.full(holding(study, trials=now)):
            study.stop()

    try:
        while deadline is None or time.monotonic() < deadline:
            fail_dead_trials(study)
            now = study.get_trials(deepcopy=False)
            # a trial just created elsewhere holds its place until claimed or orphaned: wait for it rather
            # than start one that would yield (and burn a grid point) while it is not yet claimed
            held = holding(study, before=len(now), trials=now)
            missing = trials - len(held) if run.budget is None else min(trials - len(held), run.budget.room(held))
            waiting = [t for t in now if t.state == TrialState.WAITING]
            if missing <= 0 and not waiting:
                if sum(map(is_counted, now)) >= trials or not awaited(study, heartbeat is not None):
                    break
                time.sleep(poll)  # the rest is running in other workers: wait until it finishes or goes stale
                continue
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break
            study.optimize(
                run,
                n_trials=int(max(missing, 1)),
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
                n_jobs=jobs,
                catch=(CandidateFailed, Surplus),
                callbacks=[after_trial],
                gc_after_trial=False,
            )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted(study)) from None
    finally:
        shown.close()
