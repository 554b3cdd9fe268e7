"""The persistent result store: every training (and zero-cost score) of the audit, in an Optuna storage.

One Optuna study per group (dataset key, training source, recipe key), named
`nasdd-results/<dataset>/<source>/<recipe>`; one trial per job (ArchSpec key, evaluation split, seed)
with the job in user attributes and the result dict in `result`. A finished job is never computed
again, whichever run, proxy or worker asks.

Several workers may share one storage (SQLite on one machine, PostgreSQL or a journal file for many):
a worker claims a job by creating a RUNNING trial, and only the earliest live claim of a job works on
it; the others move on and later wait for it. A working claim beats every `heartbeat` seconds (a
`beat` user attribute, host clock); a claim whose process has died (same host, pid gone), whose beat is
older than three heartbeats (a worker killed on any host), or, without beats, that is older than
`stale_after` seconds is taken over and marked FAIL, so no dead claim stays RUNNING. An interrupted job
releases its claim. A result whose claim was taken over meanwhile is still recorded (never lost).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nasdd.arch import ArchSpec
from nasdd.storage import died_here, open_storage, worker_id
from nasdd.utils import clip, progress

WORKER = worker_id()
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Job:
    """One unit of work: an architecture, a seed and the split it is scored on."""

    arch: ArchSpec
    seed: int
    split: str

    @property
    def key(self) -> str:
        return f"{self.arch.key()}|{self.split}|{self.seed}"


Compute = Callable[[Job], tuple[float, dict[str, Any]]]  # -> (value, result dict)


def _alive(t: FrozenTrial, stale_after: float) -> bool:
    """Whether a RUNNING claim still has a worker (see the module docstring)."""
    worker, started, beat = t.user_attrs.get("worker", ""), t.datetime_start, t.user_attrs.get("beat")
    if died_here(worker):
        return False
    if beat is not None:
        return time.time() - float(beat) < 3 * float(t.user_attrs.get("beat_every", 60.0))
    return started is None or (datetime.now() - started).total_seconds() < stale_after


class _Heartbeat:
    """While a claimed job is computed, refresh its `beat` every `every` seconds from a thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, every: float) -> None:
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "beat", time.time())
            except Exception:  # the claim was taken over (finished) or the storage hiccupped: stop beating
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class ResultStore:
    """Finished jobs, cached in an Optuna storage and computed at most once across runs and workers."""

    def __init__(
        self, url: str | None, *, stale_after: float = 6 * 3600, poll_seconds: float = 5.0, heartbeat: float = 60.0
    ) -> None:
        self.url = url
        self.storage = open_storage(url)
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.poll_seconds = poll_seconds
        self._studies: dict[tuple[str, ...], optuna.Study] = {}

    def study(self, group: Sequence[str]) -> optuna.Study:
        group = tuple(group)
        if group not in self._studies:
            name = "nasdd-results/" + "/".join(group)
            self._studies[group] = optuna.create_study(
                study_name=name, storage=self.storage, load_if_exists=True, direction="maximize"
            )
        return self._studies[group]

    def _study_id(self, study: optuna.Study) -> int:
        return self.storage.get_study_id_from_name(study.study_name)

    def _scan(self, study_id: int) -> tuple[dict[str, dict], dict[str, list[FrozenTrial]]]:
        """(finished results by job key, live claims by job key, earliest first)."""
        done: dict[str, dict] = {}
        claims: dict[str, list[FrozenTrial]] = {}
        for t in self.storage.get_all_trials(study_id, deepcopy=False):
            key = t.user_attrs.get("job")
            if key is None:
                continue
            if "result" in t.user_attrs:
                done.setdefault(key, t.user_attrs["result"])
            elif t.state == TrialState.RUNNING:
                if _alive(t, self.stale_after):
                    claims.setdefault(key, []).append(t)
                else:  # a dead or stale claim is taken over: mark it failed so it does not stay RUNNING
                    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                        self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        return done, claims

    def results(self, group: Sequence[str]) -> dict[str, dict]:
        """Every finished job of a group, by job key."""
        return self._scan(self._study_id(self.study(group)))[0]

    def _attempt(self, study_id: int, job: Job, compute: Compute) -> dict | None:
        """Claim and compute `job`; None if another worker holds an earlier live claim.

        The claim is a RUNNING trial carrying the job; it becomes the result (COMPLETE, or FAIL for a
        failed training) or, when released, a FAIL trial without a result. Storage calls are kept few:
        each one is a transaction.
        """
        attrs = {"job": job.key, "worker": WORKER, "arch": job.arch.to_json(), "seed": job.seed, "split": job.split}
        attrs.update(beat=time.time(), beat_every=self.heartbeat)
        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs)
        tid = self.storage.create_new_trial(study_id, template_trial=template)
        done, claims = self._scan(study_id)
        live = claims.get(job.key, [])
        if job.key in done or not live or live[0]._trial_id != tid:
            self.storage.set_trial_state_values(tid, TrialState.FAIL)
            return done.get(job.key)
        finished = False
        try:
            with _Heartbeat(self.storage, tid, self.heartbeat):
                value, result = compute(job)
            ok = value is not None and math.isfinite(value)
            try:
                self.storage.set_trial_user_attr(tid, "result", json.loads(json.dumps(result, default=float)))
                self.storage.set_trial_state_values(
                    tid, TrialState.COMPLETE if ok else TrialState.FAIL, [value] if ok else None
                )
            except optuna.exceptions.UpdateFinishedTrialError:  # judged dead meanwhile: record the result anyway
                self._store(study_id, job, value, result)
            finished = True
            return result
        finally:
            if not finished:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    self.storage.set_trial_state_values(tid, TrialState.FAIL)

    def _record(self, study_id: int, job: Job, compute: Compute) -> dict:
        """Compute `job` without claiming it and record the result in one transaction (cheap jobs)."""
        value, result = compute(job)
        self._store(study_id, job, value, result)
        return result

    def _store(self, study_id: int, job: Job, value: float | None, result: dict) -> None:
        """Record a finished job as one new trial (one transaction)."""
        ok = value is not None and math.isfinite(value)
        attrs = {"job": job.key, "worker": WORKER, "arch": job.arch.to_json(), "seed": job.seed, "split": job.split}
        attrs["result"] = json.loads(json.dumps(result, default=float))
        state = TrialState.COMPLETE if ok else TrialState.FAIL
        template = optuna.trial.create_trial(state=state, value=value if ok else None, user_attrs=attrs)
        self.storage.create_new_trial(study_id, template_trial=template)

    def run(
        self, group: Sequence[str], jobs: Sequence[Job], compute: Compute, *, desc: str = "", claim: bool = True
    ) -> dict[str, dict]:
        """The result of every job (by job key): cached ones read back, the rest computed once.

        `claim=False` skips the claim protocol for cheap jobs (e.g. zero-cost scores): two workers may
        then both compute a job, and the first recorded result is the one read back.
        """
        study_id = self._study_id(self.study(group))
        done, _ = self._scan(study_id)
        todo = [j for j in dict.fromkeys(jobs) if j.key not in done]
        bar = progress(total=len(todo), desc=desc, unit="job", disable=not todo)
        while todo:
            deferred = []
            for job in todo:
                bar.set_postfix_str(f"{clip(job.arch.short())} seed {job.seed}", refresh=True)
                result = self._attempt(study_id, job, compute) if claim else self._record(study_id, job, compute)
                if result is None:
                    deferred.append(job)
                else:
                    done[job.key] = result
                    bar.update(1)
            if deferred:
                bar.set_postfix_str(f"waiting for {len(deferred)} jobs of other workers", refresh=True)
                time.sleep(self.poll_seconds)
                done.update(self._scan(study_id)[0])
            todo = [j for j in deferred if j.key not in done]
        bar.close()
        return {j.key: done[j.key] for j in jobs}
