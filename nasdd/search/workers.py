"""Worker bookkeeping shared through the storage: which trials count, which workers are dead, retries.

Every trial records its worker (`host:pid`) as its first act. A RUNNING trial whose worker on this host
has ended, or (RDB storages) whose Optuna heartbeat stopped, belonged to a dead worker: it is marked
FAIL (not counted) and queued again with the same parameters, at most `MAX_RETRY` times.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import warnings
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from nasdd.errors import NasddError
from nasdd.storage import died_here, worker_id

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 60  # seconds between heartbeats of a running trial (RDB storages); stale after twice that
MAX_RETRY = 3  # times a dead worker's trial is queued again


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue a dead worker's trial again with the same parameters (Optuna's RetryFailedTrialCallback),
    without the dead worker's user attributes (its `worker` would mark the retry as orphaned).

    Returns whether it was queued: a trial already retried `MAX_RETRY` times is not."""
    clean = copy.copy(trial)
    clean.user_attrs = {}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
    (retry or optuna.storages.RetryFailedTrialCallback)(max_retry=MAX_RETRY)(study, clean)
    return len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY  # Optuna's own condition


def pin(study: optuna.Study, key: str, settings: dict, refusal: str) -> None:
    """Record `settings` in the study's user attribute `key`, or refuse (one line: `refusal`, then the differing
    settings) a study made with others."""
    old = study.user_attrs.get(key)
    if old is None:
        study.set_user_attr(key, settings)
    elif old != settings:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
        raise NasddError(f"{refusal} ({diff}); use a new `study_name`", params=("study_name",))


ORPHAN_S = 60.0  # a running trial without a worker after this long was orphaned at creation


def is_counted(t: FrozenTrial) -> bool:
    """Finished trials that count towards `trials`: complete, pruned, or failed with a recorded reason."""
    return t.state in COUNTED or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if is_counted(t)]


def _orphaned(t: FrozenTrial) -> bool:
    """A RUNNING trial whose worker on this host has ended, or that never got a worker (killed at birth)."""
    worker = t.user_attrs.get("worker")
    if worker is None:
        return t.datetime_start is not None and (datetime.now() - t.datetime_start).total_seconds() > ORPHAN_S
    return died_here(worker)


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL (not counted) the RUNNING trials left by dead workers and queue them again; return their numbers.

    Dead: a worker on this host whose process is gone, or (RDB storages) a trial whose heartbeat stopped.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeat storages; calls retry_trial itself
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _orphaned(t):
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


def busy(study: optuna.Study, before: int | None = None, *, trials: list[FrozenTrial] | None = None) -> int:
    """The number of trials holding a place: see `holding`."""
    return len(holding(study, before, trials=trials))


def holding(
    study: optuna.Study, before: int | None = None, *, trials: list[FrozenTrial] | None = None
) -> list[FrozenTrial]:
    """Counted plus running trials (only those numbered below `before` when given).

    A running trial counts once its worker has claimed it (the first thing a trial does), so a trial
    orphaned between its creation and that claim never holds a place. With `before` (a new trial
    checking for room), a younger unclaimed trial counts too: of two workers creating trials at once,
    the one holding the higher number yields. `trials`: the study's trials when the caller has just read them.
    """

    def holds(t: FrozenTrial) -> bool:
        if is_counted(t):
            return True
        claimed = "worker" in t.user_attrs
        return t.state == TrialState.RUNNING and (claimed or (before is not None and not _orphaned(t)))

    trials = study.get_trials(deepcopy=False) if trials is None else trials
    return [t for t in trials if (before is None or t.number < before) and holds(t)]


def awaited(study: optuna.Study, heartbeat: bool) -> bool:
    """Whether other workers run trials this one should wait for: any (a dead one's heartbeat stops and
    its trial is redone), or without heartbeats only those on this host (a dead one's pid tells); and a
    trial not claimed yet (claimed in a moment, or orphaned at birth and failed after `ORPHAN_S`)."""
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    workers = [str(t.user_attrs["worker"]) for t in running if "worker" in t.user_attrs]
    unclaimed = any("worker" not in t.user_attrs and not _orphaned(t) for t in running)
    return unclaimed or any(heartbeat or w.rpartition(":")[0] == host for w in workers)


def interrupted(study: optuna.Study) -> str:
    """Queue again the trials this worker was running when interrupted (Optuna marks them FAIL)."""
    me = worker_id()
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    queued: list[str] = []
    dropped: list[str] = []
    for t in trials:
        mine = t.user_attrs.get("worker") == me and t.state in (TrialState.FAIL, TrialState.RUNNING)
        if mine and not is_counted(t) and "surplus" not in t.user_attrs and t.number not in retried:
            if t.state == TrialState.RUNNING:  # interrupted before Optuna could tell
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            (queued if retry_trial(study, t) else dropped).append(str(t.number))
    what = f"trial {', '.join(queued)} marked failed and queued again; " if queued else ""
    if dropped:
        what += f"trial {', '.join(dropped)} marked failed, not queued again (retried {MAX_RETRY} times already); "
    return f"{what}rerun the same command to finish the study"
