"""Search stage: an Optuna architecture search whose candidates train only on a proxy set.

Each trial asks the search space for an ArchSpec (`space.suggest(trial)`), trains it with the one
trainer on the proxy (the proxy's learned learning rate and soft labels when it has them; `full`
trains on the whole training split instead) and scores it on the real validation split — never on
test. Optuna does the sampling, pruning, storage and parallelism:

- storage: any Optuna storage URL (SQLite by default, PostgreSQL, ...) or a journal file
  (`journal:PATH` or a path ending `.log`); the same study name and storage resume the search;
- resume and sharing: `trials` is the number of *finished* trials (complete, pruned, or failed with a
  recorded reason) the study should hold; every worker runs only the missing ones, so a rerun after a
  crash and several processes on one storage end with exactly that many (a trial left running by a
  dead worker is marked failed, not counted, and redone: see crashes below; a trial that finds the
  study already full is marked FAIL with a `surplus` attribute and not counted: of two workers
  creating trials at once, the one holding the higher trial number yields);
- cache: an ArchSpec already trained on the same proxy, recipe and seed is served from the study's
  finished trials instead of trained again (this works across processes through the storage);
- failures (NaN, out of memory, build errors) end the trial as FAIL with `fail_reason` and the search
  goes on;
- crashes: with an RDB storage (SQLite, PostgreSQL) every running trial sends Optuna heartbeats
  (`heartbeat` seconds apart); a trial silent for twice that long belonged to a dead worker (SIGKILL,
  power loss, any host) and is marked FAIL by the next worker that looks. Journal storages have no
  heartbeat in Optuna: there a dead worker is recognised by its process id (one host). Either way the
  dead trial is queued again with the same parameters (Optuna's RetryFailedTrialCallback) and another
  worker redoes it; a worker whose share is done waits for the trials still running elsewhere (with a
  journal, only for those on its own host), so the study ends complete. SIGINT (Ctrl-C) fails and
  requeues the running trial and exits with code 130.

Trial user attributes: `arch` (JSON), `arch_key`, `proxy_id`, `recipe_key`, `params`, `flops`
(forward FLOPs per sample), `seconds`, `sample_grads`, `train_flops`, and `cached_from` on cache hits.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import math
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

from nasdd import __version__
from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle, load_dataset
from nasdd.errors import NasddError, unknown_name
from nasdd.spaces import SearchSpace, load_space
from nasdd.storage import rdb_storage
from nasdd.train import TrainRecipe, build_seeded, evaluate, fit, train_arch
from nasdd.utils import atomic_open, atomic_path, ensure_dir, progress, resolve_device, stable_hash, write_json

SAMPLERS: dict[str, str] = {
    "tpe": "Tree-structured Parzen Estimator (Optuna's default; single and multi-objective)",
    "random": "independent uniform sampling (single and multi-objective)",
    "grid": "every member of a finite space once, in random order; stops when the grid is exhausted",
    "cmaes": "CMA-ES with margin over int/float parameters; categorical ones fall back to TPE (single objective)",
    "qmc": "scrambled Sobol quasi-random sequence, categoricals mapped onto Sobol coordinates",
    "nsga2": "NSGA-II genetic algorithm (population min(50, max(4, trials // 4))), made for multi-objective",
}
PRUNERS = ("none", "median", "hyperband")
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "flops": "minimize"}
REPORTS = 10  # intermediate validation accuracies per trial when a pruner is on
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 60  # seconds between heartbeats of a running trial (RDB storages); stale after twice that
MAX_RETRY = 3  # times a dead worker's trial is queued again


def catalog() -> list[tuple[str, str]]:
    """The samplers `nasdd list samplers` shows."""
    return list(SAMPLERS.items())


class CandidateFailed(Exception):
    """A candidate that could not be trained; the trial is recorded as FAIL with the reason."""


class _Surplus(Exception):
    """The study reached its trial count (other workers finished it) while this trial was being created."""


@dataclass
class TrainingData:
    """What candidates train on (a proxy or the full split) and what they are scored on (real val)."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    lr: float | None
    proxy_id: str
    provenance: dict


def training_data(proxy: Any, bundle: DatasetBundle, device: torch.device) -> TrainingData:
    """`proxy`: "full", a ProxySet folder, or a loaded ProxySet. Tensors are moved to `device` once."""
    x_val, y_val = bundle.x_val, bundle.y_val
    if isinstance(proxy, str) and proxy == "full":
        x, y, lr, pid, prov = bundle.x_train, bundle.y_train, None, f"full-{bundle.key}", {"method": "full"}
    else:
        if isinstance(proxy, str | Path):
            from nasdd.distill.proxy import ProxySet

            proxy = ProxySet.load(proxy, bundle)
        (x, y), lr, pid, prov = proxy.train_data(), proxy.lr, proxy.id, dict(proxy.provenance)
        x_val = proxy.input_transform(x_val)
    to = lambda t: t.detach().to(device)  # noqa: E731
    return TrainingData(to(x), to(y), to(x_val), to(y_val), bundle.num_classes, lr, pid, prov)


# ---------------------------------------------------------------------------------------------------
# Optuna pieces: storage, sampler, pruner.


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a dead worker's trial again with the same parameters (Optuna's RetryFailedTrialCallback),
    without the dead worker's user attributes (its `worker` would mark the retry as orphaned)."""
    clean = copy.copy(trial)
    clean.user_attrs = {}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
    (retry or optuna.storages.RetryFailedTrialCallback)(max_retry=MAX_RETRY)(study, clean)


def open_storage(url: str | None, out: Path, *, heartbeat: int | None = HEARTBEAT_S) -> optuna.storages.BaseStorage:
    """None: SQLite in `out`; `journal:PATH` or `*.log`: a journal file; anything else: an SQLAlchemy URL.

    RDB storages get Optuna heartbeats every `heartbeat` seconds (None: off) with a grace period of
    twice that, and `retry_trial` for the trials found stale."""
    if url is None:
        url = f"sqlite:///{(ensure_dir(out) / 'study.db').resolve()}"
    try:
        if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
            path = Path(url.removeprefix("journal:"))
            ensure_dir(path.parent)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        if "://" not in url:
            raise NasddError(
                f"unknown storage {url!r}; give an SQLAlchemy URL (sqlite:///PATH, postgresql://...), "
                "journal:PATH or a PATH ending .log"
            )
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            ensure_dir(Path(url.removeprefix("sqlite:///")).parent)
            kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait instead of failing
        if heartbeat is not None and heartbeat < 1:
            raise NasddError(f"--heartbeat must be >= 1 second, got {heartbeat}")
        beat: dict[str, Any] = {}
        if heartbeat:
            params = inspect.signature(optuna.storages.RDBStorage).parameters
            callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else None
            beat = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat}
            beat[callback or "failed_trial_callback"] = retry_trial
        return rdb_storage(url, engine_kwargs=kwargs, **beat)
    except NasddError:
        raise
    except Exception as exc:  # SQLAlchemy and driver errors: a bad URL or an unreachable server
        raise NasddError(
            f"cannot open storage {url!r}: {_first_line(exc)}; check the URL and that the server is up"
        ) from exc


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message, without SQLAlchemy's '(driver.Error)' prefix."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text.split(") ", 1)[1] if text.startswith("(") and ") " in text else text


def make_sampler(name: str, space: SearchSpace, *, seed: int, trials: int, multi: bool) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise unknown_name("sampler", name, list(SAMPLERS))
    if name == "cmaes" and multi:
        raise NasddError("the cmaes sampler is single-objective; use tpe, random, grid, qmc or nsga2")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            with_margin=True,
            independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False,
        )
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 4)))


def make_pruner(name: str, *, multi: bool, resource: int, every: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise unknown_name("pruner", name, PRUNERS)
    if name != "none" and multi:
        raise NasddError("Optuna does not support pruning in multi-objective studies; use --pruner none")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=resource)
    return optuna.pruners.NopPruner()


def parse_objective(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or names[0] != "accuracy" or len(names) > 2 or any(n not in OBJECTIVES for n in names):
        raise NasddError(f"unknown objective {text!r}; valid objectives: accuracy, accuracy,params, accuracy,flops")
    return names


# ---------------------------------------------------------------------------------------------------
# Trial bookkeeping shared by every worker through the storage.

ORPHAN_S = 60.0  # a running trial without a worker after this long was orphaned at creation


def is_counted(t: FrozenTrial) -> bool:
    """Finished trials that count towards `trials`: complete, pruned, or failed with a recorded reason."""
    return t.state in COUNTED or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if is_counted(t)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphaned(t: FrozenTrial, host: str) -> bool:
    """A RUNNING trial whose worker on this host has ended, or that never got a worker (killed at birth)."""
    worker = t.user_attrs.get("worker")
    if worker is None:
        return t.datetime_start is not None and (datetime.now() - t.datetime_start).total_seconds() > ORPHAN_S
    h, _, pid = str(worker).rpartition(":")
    return h == host and pid.isdigit() and not _pid_alive(int(pid))


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL (not counted) the RUNNING trials left by dead workers and queue them again; return their numbers.

    Dead: a worker on this host whose process is gone, or (RDB storages) a trial whose heartbeat stopped.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeat storages; calls retry_trial itself
    host = socket.gethostname()
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _orphaned(t, host):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        dead.append(t.number)
        if "worker" in t.user_attrs:  # it had started work; one orphaned at birth has nothing to redo
            retry_trial(study, t)
    return dead


def _busy(study: optuna.Study, before: int | None = None) -> int:
    """Counted plus running trials (only those numbered below `before` when given).

    A running trial counts once its worker has claimed it (the first thing a trial does), so a trial
    orphaned between its creation and that claim never holds a place. With `before` (a new trial
    checking for room), a younger unclaimed trial counts too: of two workers creating trials at once,
    the one holding the higher number yields.
    """
    host = socket.gethostname()

    def holds(t: FrozenTrial) -> bool:
        if is_counted(t):
            return True
        claimed = "worker" in t.user_attrs
        return t.state == TrialState.RUNNING and (claimed or (before is not None and not _orphaned(t, host)))

    return sum(1 for t in study.get_trials(deepcopy=False) if (before is None or t.number < before) and holds(t))


def _cache_hit(study: optuna.Study, cache_key: str) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("cache_key") == cache_key:
            return t
    return None


def _set_attrs(trial: optuna.Trial, **attrs: Any) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


RESULT_ATTRS = ("params", "flops", "val_accuracy", "val_loss", "steps")


@dataclass
class Objective:
    """The per-trial work: suggest, (cache | train on the proxy), score on real val."""

    space: SearchSpace
    data: TrainingData
    recipe: TrainRecipe
    objectives: list[str]
    target: int
    seed: int
    device: torch.device
    eval_every: int

    @property
    def recipe_key(self) -> str:
        return self.recipe.key()

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if _busy(trial.study, before=trial.number) >= self.target:
            trial.set_user_attr("surplus", "the study already had its trials when this one started")
            trial.study.stop()
            raise _Surplus("study complete")
        spec = self.space.suggest(trial)
        cache_key = stable_hash([spec.key(), self.data.proxy_id, self.recipe_key, self.seed], 16)
        _set_attrs(
            trial,
            arch=spec.to_json(),
            arch_key=spec.key(),
            proxy_id=self.data.proxy_id,
            recipe_key=self.recipe_key,
            train_seed=self.seed,
            cache_key=cache_key,
        )
        if (hit := _cache_hit(trial.study, cache_key)) is not None:
            _set_attrs(trial, **{k: hit.user_attrs.get(k) for k in RESULT_ATTRS})
            _set_attrs(
                trial,
                cached_from=hit.user_attrs.get("cached_from", hit.number),
                seconds=0.0,
                sample_grads=0,
                train_flops=0,
            )
            return hit.values if len(self.objectives) > 1 else hit.values[0]
        return self._train(trial, spec)

    def _train(self, trial: optuna.Trial, spec: ArchSpec) -> float | list[float]:
        d = self.data
        start = time.perf_counter()

        def on_eval(unit: int, acc: float) -> None:
            trial.report(acc, unit)
            if trial.should_prune():
                per_unit = len(d.x) if self.recipe.steps is None else min(self.recipe.batch_size, len(d.x))
                _set_attrs(trial, pruned_at=unit, seconds=time.perf_counter() - start, sample_grads=unit * per_unit)
                raise optuna.TrialPruned(f"val accuracy {acc:.4f} at {unit}")

        try:
            res = train_arch(
                spec,
                d.x,
                d.y,
                self.recipe,
                num_classes=d.num_classes,
                seed=self.seed,
                device=self.device,
                eval_data=(d.x_val, d.y_val),
                eval_every=self.eval_every,
                on_eval=on_eval,
            )
        except (RuntimeError, ValueError, MemoryError, NasddError) as exc:  # CUDA OOM is a RuntimeError
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            res = None
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        if res is not None:
            _set_attrs(
                trial,
                params=res.params,
                flops=res.flops_per_sample,
                val_accuracy=res.accuracy,
                val_loss=res.loss,
                steps=res.steps,
                seconds=res.seconds,
                sample_grads=res.sample_grads,
                train_flops=res.train_flops,
            )
            reason = res.error or ""
            if res.ok:
                values = [
                    res.accuracy,
                    *(res.params if o == "params" else res.flops_per_sample for o in self.objectives[1:]),
                ]
                return values if len(values) > 1 else values[0]
        trial.set_user_attr("fail_reason", reason or "unknown failure")
        raise CandidateFailed(reason)


# ---------------------------------------------------------------------------------------------------
# The search.


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
    trials: int = 20,
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
) -> optuna.Study:
    """Run (or resume) a search until the study holds `trials` finished trials; return the Optuna study.

    `proxy`: "full", a ProxySet folder or a ProxySet. `recipe`: a TrainRecipe or recipe text (default
    `proxy`, or `full` with `proxy="full"`); a learned proxy lr replaces the recipe's. Outputs go to
    `out` (default results/<study_name>): trials.csv, top.csv, PNG plots, config.json and, with
    `retrain_top`, retrain.csv. `heartbeat`: seconds between trial heartbeats in RDB storages (module doc).
    """
    if trials < 1 or jobs < 1 or top < 0 or retrain_top < 0:
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
    train_recipe = replace(base, lr=data.lr) if data.lr else base
    resource = train_recipe.steps if train_recipe.steps is not None else train_recipe.epochs
    every = max(1, resource // REPORTS) if pruner != "none" else 0
    _quiet_optuna()
    study = _open_study(
        study_name,
        storage,
        out,
        pruner=make_pruner(pruner, multi=multi, resource=resource, every=every),
        directions=[OBJECTIVES[o] for o in objectives],
        fingerprint=_fingerprint(space, bundle, data, train_recipe, objectives),
        heartbeat=heartbeat,
    )
    # A resumed (or joining) worker continues the sampler's randomness instead of replaying it; the grid
    # sampler's order must be the same in every worker (it maps trial numbers to grid points).
    sampler_seed = seed if sampler == "grid" else seed + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(sampler, space, seed=sampler_seed, trials=trials, multi=multi)
    config = {
        "version": __version__,
        "study": study_name,
        "storage": storage or f"sqlite:///{(out / 'study.db').resolve()}",
        "space": {"name": space.name, "path": space.path, "size": space.size},
        "dataset": bundle.meta(),
        "proxy": {
            "id": data.proxy_id,
            "source": str(proxy) if isinstance(proxy, str | Path) else "object",
            "provenance": data.provenance,
            "train_size": len(data.x),
        },
        "recipe": asdict(train_recipe),
        "sampler": sampler,
        "pruner": pruner,
        "eval_every": every,
        "objective": objectives,
        "trials": trials,
        "timeout": timeout,
        "jobs": jobs,
        "seed": seed,
        "sampler_seed": sampler_seed,
        "device": str(device),
    }
    write_json(out / "config.json", config)
    run = Objective(space, data, train_recipe, objectives, trials, seed, device, every)
    _optimize(study, run, trials=trials, timeout=timeout, jobs=jobs, show_progress=show_progress)
    write_outputs(study, out, top)
    if retrain_top:
        rr = retrain_recipe if isinstance(retrain_recipe, TrainRecipe) else TrainRecipe.parse(retrain_recipe)
        retrain(study, bundle, retrain_top, rr, seed=seed, device=device, out=out, show_progress=show_progress)
    return study


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _open_study(
    name: str, storage: str | None, out: Path, *, fingerprint: dict, heartbeat: int | None, **kwargs: Any
) -> optuna.Study:
    store = open_storage(storage, out, heartbeat=heartbeat)
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


def _optimize(
    study: optuna.Study, run: Objective, *, trials: int, timeout: float | None, jobs: int, show_progress: bool
) -> None:
    """Run trials until the study holds `trials` counted ones; wait for (or redo) other workers' trials."""
    deadline = None if timeout is None else time.monotonic() + timeout
    heartbeat = study._storage.get_heartbeat_interval() if hasattr(study._storage, "get_heartbeat_interval") else None
    poll = min(5.0, heartbeat or 5.0)
    bar = progress(
        total=trials,
        initial=min(trials, len(counted_trials(study))),
        desc=f"search {study.study_name}",
        unit="trial",
        disable=None if show_progress else True,
    )

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        counted = counted_trials(study)
        bar.set_postfix_str(_best_text(study, counted), refresh=False)
        bar.update(max(0, min(len(counted), trials) - bar.n))  # through update() so tqdm's ETA sees the rate
        if _busy(study) >= trials:
            study.stop()

    try:
        while deadline is None or time.monotonic() < deadline:
            fail_dead_trials(study)
            missing = trials - _busy(study)
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if missing <= 0 and not waiting:
                if len(counted_trials(study)) >= trials or not _awaited(study, heartbeat is not None):
                    break
                time.sleep(poll)  # the rest is running in other workers: wait until it finishes or goes stale
                continue
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break
            study.optimize(
                run,
                n_trials=max(missing, 1),
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
                n_jobs=jobs,
                catch=(CandidateFailed, _Surplus),
                callbacks=[after_trial],
                gc_after_trial=False,
            )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted(study)) from None
    finally:
        bar.close()


def _awaited(study: optuna.Study, heartbeat: bool) -> bool:
    """Whether other workers run trials this one should wait for: any (a dead one's heartbeat stops and
    its trial is redone), or without heartbeats only those on this host (a dead one's pid tells)."""
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    workers = [str(t.user_attrs["worker"]) for t in running if "worker" in t.user_attrs]
    return any(heartbeat or w.rpartition(":")[0] == host for w in workers)


def _interrupted(study: optuna.Study) -> str:
    """Queue again the trials this worker was running when interrupted (Optuna marks them FAIL)."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    numbers = []
    for t in trials:
        mine = t.user_attrs.get("worker") == me and t.state in (TrialState.FAIL, TrialState.RUNNING)
        if mine and not is_counted(t) and "surplus" not in t.user_attrs and t.number not in retried:
            if t.state == TrialState.RUNNING:  # interrupted before Optuna could tell
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            retry_trial(study, t)
            numbers.append(str(t.number))
    what = f"trial {', '.join(numbers)} marked failed and queued again; " if numbers else ""
    return f"{what}rerun the same command to finish the study"


def _best_text(study: optuna.Study, counted: list[FrozenTrial]) -> str:
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    if not complete:
        return "best -"
    if len(study.directions) > 1:
        return f"pareto {len(study.best_trials)}"
    return f"best {max(t.value for t in complete):.4f}"


# ---------------------------------------------------------------------------------------------------
# Outputs.


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The best `k` distinct architectures; multi-objective: the Pareto front first, each by accuracy."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    front = {t.number for t in study.best_trials} if len(study.directions) > 1 and complete else set()
    ranked = sorted(complete, key=lambda t: (t.number not in front, -t.values[0], t.number))
    seen, out = set(), []
    for t in ranked:
        if t.user_attrs.get("arch_key") not in seen:
            seen.add(t.user_attrs.get("arch_key"))
            out.append(t)
    return out[:k]


def write_outputs(study: optuna.Study, out: Path, top: int) -> None:
    """trials.csv, top.csv and Optuna's matplotlib plots (PNG) in `out`."""
    with atomic_open(out / "trials.csv") as f:
        study.trials_dataframe().to_csv(f, index=False)
    names = ["accuracy", *(study.user_attrs.get("nasdd", {}).get("objective", "").split(",")[1:])]
    rows = []
    for rank, t in enumerate(top_trials(study, top), 1):
        a = t.user_attrs
        row = {"rank": rank, "trial": t.number, **dict(zip(names, t.values, strict=False))}
        row.update({k: a.get(k) for k in ("params", "flops", "seconds", "sample_grads", "cached_from")})
        rows.append({**row, "arch_key": a.get("arch_key"), "arch": a.get("arch")})
    with atomic_open(out / "top.csv") as f:
        pd.DataFrame(rows, columns=None if rows else ["rank", "trial", "accuracy", "arch_key", "arch"]).to_csv(
            f, index=False
        )
    write_plots(study, out, names)


def write_plots(study: optuna.Study, out: Path, names: list[str]) -> list[str]:
    """Optimisation history, parameter importances (needs >= 2 distinct results) and the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    multi = len(study.directions) > 1
    first = {"target": (lambda t: t.values[0]), "target_name": "val accuracy"}
    plots: dict[str, Any] = {"history": lambda: ovm.plot_optimization_history(study, **first)}
    if len({t.values[0] for t in complete}) > 1 and len(complete) >= 2:
        fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)  # variance-based: indifferent to direction
        plots["importances"] = lambda: ovm.plot_param_importances(study, evaluator=fanova, **first)
    if multi:
        plots["pareto"] = lambda: ovm.plot_pareto_front(study, target_names=names)
    if any(t.intermediate_values for t in complete):
        plots["intermediate"] = lambda: ovm.plot_intermediate_values(study)
    written = []
    for name, plot in plots.items():
        try:
            ax = plot()
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances of a single-valued parameter set
            continue
        fig = ax.figure
        fig.tight_layout()
        with atomic_path(out / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


# ---------------------------------------------------------------------------------------------------
# Retraining the top candidates on the full data: the usual last step of a proxy search.


def retrain(
    study: optuna.Study,
    bundle: DatasetBundle,
    k: int,
    recipe: TrainRecipe,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    out: Path | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Retrain the top `k` architectures on the full training split; the winner has the best val accuracy.

    Test accuracy is reported, never used to choose. Results are kept in the study's user attributes,
    so a rerun (or another worker) does not train them again.
    """
    device = resolve_device(device)
    rows = []
    top = top_trials(study, k)
    for rank, t in enumerate(progress(top, desc="retrain", disable=None if show_progress else True), 1):
        spec = ArchSpec.from_json(t.user_attrs["arch"])
        key = f"retrain:{spec.key()}:{recipe.key()}:{seed}:{bundle.key}"
        res = study.user_attrs.get(key)
        if res is None:
            res = retrain_one(spec, bundle, recipe, seed=seed, device=device)
            study.set_user_attr(key, res)
        rows.append({"rank": rank, "trial": t.number, "search_value": t.values[0], **res, "arch": spec.to_json()})
    df = pd.DataFrame(rows)
    if len(df):
        ok = df[df["status"] == "ok"]
        df["winner"] = df.index == (ok["val_accuracy"].idxmax() if len(ok) else -1)
    if out is not None:
        with atomic_open(Path(out) / "retrain.csv") as f:
            df.to_csv(f, index=False)
    return df


def retrain_one(spec: ArchSpec, bundle: DatasetBundle, recipe: TrainRecipe, *, seed: int, device: torch.device) -> dict:
    """Train `spec` on the full training split; val and test accuracy and the cost."""
    try:
        model = build_seeded(spec, (bundle.channels, bundle.image_size, bundle.image_size), bundle.num_classes, seed)
        res = fit(
            model,
            bundle.x_train,
            bundle.y_train,
            recipe,
            seed=seed,
            device=device,
            eval_data=(bundle.x_val, bundle.y_val),
        )
    except (RuntimeError, ValueError, NasddError) as exc:
        return {
            "status": "failed",
            "error": str(exc).splitlines()[0][:500],
            "val_accuracy": math.nan,
            "test_accuracy": math.nan,
            "seconds": 0.0,
            "sample_grads": 0,
            "params": 0,
        }
    test_acc = evaluate(model, bundle.x_test, bundle.y_test, device=device)[0] if res.ok else math.nan
    return {
        "status": res.status,
        "error": res.error or "",
        "val_accuracy": res.accuracy,
        "test_accuracy": test_acc,
        "seconds": res.seconds,
        "sample_grads": res.sample_grads,
        "params": res.params,
    }


# ---------------------------------------------------------------------------------------------------
# Command line.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nasdd.cli import add_data_args

    parser.add_argument("--space", required=True, help="search space: a YAML path or a name in search_spaces/")
    parser.add_argument("--proxy", required=True, help="a proxy folder (from `nasdd distill`), or `full`")
    add_data_args(parser)
    parser.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default 20)")
    parser.add_argument("--timeout", type=float, default=None, help="stop starting new trials after S seconds")
    parser.add_argument("--study", required=True, help="study name; the same name and storage resume the search")
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: an SQLAlchemy URL (sqlite:///PATH, postgresql://...), journal:PATH or PATH.log "
        "(default: sqlite in the study folder); `optuna-dashboard URL` opens it",
    )
    parser.add_argument("--sampler", default="tpe", choices=list(SAMPLERS), help="Optuna sampler (default tpe)")
    parser.add_argument(
        "--pruner",
        default="none",
        choices=PRUNERS,
        help=f"prune on intermediate val accuracy ({REPORTS} reports per trial); single objective only: "
        "Optuna forbids pruning in multi-objective studies",
    )
    parser.add_argument(
        "--objective", default="accuracy", help="accuracy (maximised), accuracy,params or accuracy,flops (minimised)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="parallel trials in this process (Optuna n_jobs)")
    parser.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    parser.add_argument("--top", type=int, default=5, help="architectures in top.csv (default 5)")
    parser.add_argument("--recipe", default=None, help="training recipe (default `proxy`, or `full` with --proxy full)")
    parser.add_argument("--retrain-top", type=int, default=0, help="retrain the top K on the full data; name a winner")
    parser.add_argument("--retrain-recipe", default="full", help="recipe for --retrain-top (default full)")
    parser.add_argument("--out", default=None, help="study folder for outputs (default results/<study>)")
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT_S,
        help=f"seconds between heartbeats of a running trial in an RDB storage; a trial silent for twice that "
        f"is failed and redone by another worker (default {HEARTBEAT_S})",
    )


def command(args: argparse.Namespace) -> int:
    from nasdd.cli import load_data_from_args

    study = search(
        args.space,
        args.proxy,
        load_data_from_args(args),
        study_name=args.study,
        trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        sampler=args.sampler,
        pruner=args.pruner,
        objective=args.objective,
        jobs=args.jobs,
        seed=args.seed,
        top=args.top,
        recipe=args.recipe,
        retrain_top=args.retrain_top,
        retrain_recipe=args.retrain_recipe,
        out=args.out,
        device=args.device,
        show_progress=not args.quiet,
        heartbeat=args.heartbeat,
    )
    out = Path(args.out or Path("results") / args.study)
    counted = counted_trials(study)
    if counted and all(t.state == TrialState.FAIL for t in counted):
        reason = counted[0].user_attrs.get("fail_reason", "unknown")
        raise NasddError(
            f"every trial failed ({len(counted)}; the first: {reason}); lower the recipe's lr or check the proxy, "
            "then search with a new --study"
        )
    states = pd.Series([t.state.name for t in counted]).value_counts().to_dict()
    print(f"study {args.study}: {len(counted)} finished trials {states}; outputs in {out}")
    if len(study.directions) > 1 and counted:
        print(f"Pareto front: {len(study.best_trials)} trials (listed first in top.csv, by val accuracy)")
    for t in top_trials(study, 1):
        extra = f" {args.objective.split(',')[1]} {t.values[1]:g}" if len(t.values) > 1 else ""
        print(f"best: trial {t.number} {ArchSpec.from_json(t.user_attrs['arch'])} val {t.values[0]:.4f}{extra}")
    if args.retrain_top and (out / "retrain.csv").exists():
        df = pd.read_csv(out / "retrain.csv")
        if "winner" in df and df["winner"].any():
            w = df[df["winner"]].iloc[0]
            print(
                f"winner after full-data retraining: {ArchSpec.from_json(w['arch'])} "
                f"val {w['val_accuracy']:.4f} test {w['test_accuracy']:.4f}"
            )
    return 0
