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
from nasdd.cost import SearchBudget, distill_cost, training_grads, trial_cost
from nasdd.data import DatasetBundle, load_dataset
from nasdd.errors import NasddError, unknown_name
from nasdd.layout import RunLayout
from nasdd.search.config import SearchConfig
from nasdd.search.objective import (
    CandidateFailed,
    Objective,
    Proxy,
    Scoring,
    Surplus,
    TrainingData,
    training_data,
)
from nasdd.search.outputs import TrialProgress, write_outputs
from nasdd.search.retraining import retrain
from nasdd.search.samplers import OBJECTIVES, make_pruner, make_sampler, parse_objective, report_every
from nasdd.search.workers import (
    awaited,
    counted_trials,
    fail_dead_trials,
    holding,
    interrupted,
    is_counted,
    pin,
    retry_trial,
)
from nasdd.spaces import SearchSpace, load_space
from nasdd.storage import masked, open_storage, sqlite_url
from nasdd.train import TrainRecipe, with_learned_lr
from nasdd.utils import ensure_dir, resolve_device, write_json


def _fingerprint(
    space: SearchSpace, bundle: DatasetBundle, data: TrainingData, recipe_key: str, objectives: list[str]
) -> dict:
    """What a resumed or joining worker must share with the study (the seed may differ per worker); `recipe_key`:
    the candidates' training recipe's, or the scoring recipe's."""
    return {
        "space": space.name,
        "family": space.family,
        "dataset": bundle.key,
        "proxy_id": data.proxy_id,
        "recipe_key": recipe_key,
        "objective": ",".join(objectives),
    }


def _recipes(config: SearchConfig, proxy: Proxy, data: TrainingData) -> tuple[TrainRecipe, TrainRecipe]:
    """The candidates' recipe (default `proxy`, or `full` with the full data; a learned proxy lr replaces the
    recipe's) and the retraining recipe (default `full`)."""
    full = isinstance(proxy, str) and proxy == "full"
    base = config.recipe or TrainRecipe.parse("full" if full else "proxy")
    return with_learned_lr(base, data.lr), config.retrain_recipe or TrainRecipe.parse("full")


def _scoring(
    config: SearchConfig, space: SearchSpace, bundle: DatasetBundle, proxy: Proxy, rr: TrainRecipe
) -> Scoring | None:
    """The config's scoring recipe, checked against the space, dataset and proxy, with its truth training: one
    training of the retraining recipe `rr` on the full training split."""
    recipe = config.scoring
    if recipe is None:
        return None
    if not (isinstance(proxy, str) and proxy == "full"):
        raise NasddError(
            "a scoring recipe trains candidates on real training images; use --proxy full (or leave it out)"
        )
    recipe.check(space=space.name, dataset_key=bundle.key)
    scoring = Scoring(recipe, bundle, training_grads(rr, len(bundle.y_train)))
    recipe.train_grads(scoring.truth_grads)  # refuses a budget its forward passes do not fit in, before any trial
    return scoring


def _setup(
    space: SearchSpace | str, bundle: DatasetBundle | str, name: str, out: str | Path | None, device: str | torch.device
) -> tuple[SearchSpace, DatasetBundle, Path, torch.device]:
    space = load_space(space) if isinstance(space, str | Path) else space
    bundle = load_dataset(bundle) if isinstance(bundle, str) else bundle
    return space, bundle, ensure_dir(out or Path("results") / name), resolve_device(device)


def search(
    space: SearchSpace | str,
    proxy: Proxy,
    bundle: DatasetBundle | str,
    config: SearchConfig,
    *,
    out: str | Path | None = None,
    device: str | torch.device = "auto",
    show_progress: bool = True,
) -> optuna.Study:
    """Run (or resume) a search until the study holds `config.trials` finished trials (default 20) or has spent
    its `config.budget`; return the Optuna study.

    `proxy`: "full", a ProxySet folder or a ProxySet. Outputs go to `out` (default results/<study_name>):
    trials.csv, top.csv, PNG plots, config.json and, with `retrain_top`, retrain.csv. With `threads` None,
    torch's thread count is shared among the trials running on this host (other workers' and this worker's
    `jobs`), so workers started side by side do not oversubscribe the cores. With a `budget` (see
    `nasdd.cost`) and no `trials`, only the budget stops the search; budget.json records the budget,
    what trials and retraining spent, and what is left. `strategy` "prescreen" (`nasdd.search.prescreen`):
    `trials` candidates scored with the cheap signal `prescreen`, then synchronous successive halving with
    factor `eta` on the full training split with `retrain_recipe`, planned from `budget`. With `scoring` (a
    calibrated `ScoringRecipe`; `proxy` must be "full"), each candidate is trained by `train_member` on real
    training images and valued by the recipe's score; its budget is a fraction of one `retrain_recipe`
    training on the full training split.
    """
    if config.strategy == "prescreen":
        return _prescreen(space, proxy, bundle, config, out=out, device=device, show_progress=show_progress)
    c = config
    target = c.target
    space, bundle, out, device = _setup(space, bundle, c.study_name, out, device)
    objectives = parse_objective(c.objective)
    multi = len(objectives) > 1
    data = training_data(proxy, bundle, device)
    train_recipe, rr = _recipes(c, proxy, data)
    scoring = _scoring(c, space, bundle, proxy, rr)
    resource = train_recipe.steps if train_recipe.steps is not None else train_recipe.epochs
    every = report_every(c.pruner, resource=resource, steps=train_recipe.steps is not None)
    spend = None
    if c.budget is not None:
        reserve = c.retrain_top * trial_cost(rr, len(bundle.x_train))
        distill = distill_cost(data.provenance) if c.budget_includes_distill else 0
        cost = trial_cost(train_recipe, len(data.x)) if scoring is None else scoring.trial_cost
        spend = SearchBudget(c.budget, cost, reserve, distill)
    torch_threads = torch.get_num_threads()
    share = c.threads is None and device.type == "cpu"
    run = Objective(space, data, train_recipe, objectives, target, c.seed, device, every,
                    c.threads or torch_threads, share, spend, scoring)  # fmt: skip
    _quiet_optuna()
    url = c.storage or sqlite_url(RunLayout(out).study_db)
    study = _open_study(
        c.study_name,
        url,
        pruner=make_pruner(c.pruner, multi=multi, resource=resource, every=every),
        directions=[OBJECTIVES[o] for o in objectives],
        fingerprint=_fingerprint(space, bundle, data, run.recipe_key, objectives),
        heartbeat=c.heartbeat,
    )
    # A resumed (or joining) worker continues the sampler's randomness instead of replaying it; the grid
    # sampler's order must be the same in every worker (it maps trial numbers to grid points).
    sampler_seed = c.seed if c.sampler == "grid" else c.seed + len(study.get_trials(deepcopy=False))
    expected = target if spend is None else min(target, spend.total // spend.trial)
    study.sampler = make_sampler(c.sampler, space, seed=sampler_seed, trials=int(expected), multi=multi)
    record = {
        "version": __version__,
        "study": c.study_name,
        "storage": masked(url),
        "space": {"name": space.name, "path": space.path, "size": space.size},
        "dataset": bundle.meta(),
        "proxy": {
            "id": data.proxy_id,
            "source": str(proxy) if isinstance(proxy, str | Path) else "object",
            "provenance": data.provenance,
            "train_size": len(data.x),
            "scored_on": data.scored_on
            + ("" if scoring is None else f"; value: the scoring recipe's {scoring.recipe.score}"),
        },
        "scoring": None if scoring is None else scoring.record(),
        "recipe": asdict(train_recipe) if scoring is None else None,  # a scoring recipe replaces it
        "sampler": c.sampler,
        "pruner": c.pruner,
        "eval_every": every,
        "objective": objectives,
        "trials": None if math.isinf(target) else target,
        "budget": None if spend is None else asdict(spend),
        "timeout": c.timeout,
        "jobs": c.jobs,
        "seed": c.seed,
        "sampler_seed": sampler_seed,
        "device": str(device),
        "threads": c.threads or "shared",
        "search": c.to_dict(),
    }
    write_json(out / "config.json", record)
    try:
        _optimize(study, run, timeout=c.timeout, jobs=c.jobs, show_progress=show_progress)
    finally:
        torch.set_num_threads(torch_threads)
    write_outputs(study, out, c.top)
    retrained = 0
    if c.retrain_top:
        df = retrain(study, bundle, c.retrain_top, rr, seed=c.seed, device=device, out=out, show_progress=show_progress)
        retrained = int(df["sample_grads"].sum()) if len(df) else 0
    if spend is not None:
        write_json(out / "budget.json", spend.summary(counted_trials(study), retrained))
    return study


def _prescreen(
    space: SearchSpace | str,
    proxy: Proxy,
    bundle: DatasetBundle | str,
    config: SearchConfig,
    *,
    out: str | Path | None,
    device: str | torch.device,
    show_progress: bool,
) -> optuna.Study:
    """The prescreen strategy (module `prescreen`): settings resolved once here, the work there."""
    from nasdd.search.prescreen import Settings, prescreen, signals

    c = config
    if c.prescreen not in signals():
        raise unknown_name("pre-screen signal", c.prescreen, signals())
    assert c.budget is not None  # SearchConfig refuses the strategy without one
    space, bundle, out, device = _setup(space, bundle, c.study_name, out, device)
    if c.threads:
        torch.set_num_threads(c.threads)
    data = training_data(proxy if c.prescreen == "proxy" else "full", bundle, device)
    proxy_recipe, rr = _recipes(c, proxy, data)
    size = space.size if space.finite else math.inf
    n = len(c.archs) if c.archs else c.trials if c.trials is not None else int(min(size, 100))
    settings = Settings(c.prescreen, n, c.budget, rr, proxy_recipe, c.eta, c.seed, c.archs, c.sampler)
    _quiet_optuna()
    url = c.storage or sqlite_url(RunLayout(out).study_db)
    study = _open_study(c.study_name, url, directions=["maximize"], heartbeat=c.heartbeat,
                        fingerprint=_fingerprint(space, bundle, data, rr.key(), ["accuracy"]))  # fmt: skip
    write_json(out / "config.json", {"version": __version__, "study": c.study_name, "storage": url,
               "strategy": "prescreen", "space": space.name, "dataset": bundle.meta(), "sampler": c.sampler,
               "settings": asdict(settings), "device": str(device), "search": c.to_dict()})  # fmt: skip
    prescreen(study, space, bundle, settings, proxy=data, device=device, out=out, show_progress=show_progress)
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
    pin(study, "nasdd", fingerprint, f"study {name!r} in this storage was made with other settings")
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
