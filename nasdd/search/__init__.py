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
  dead trial is queued again (at most 3 times) with the same parameters (Optuna's
  RetryFailedTrialCallback) and another worker redoes it; a worker whose share is done waits for the
  trials still running elsewhere (with a journal, only for those on its own host), so the study ends
  complete. SIGINT (Ctrl-C) fails and requeues the running trial and exits with code 130.

Budget: with `budget` (sample-gradients) the search stops starting trials when the next one's full
cost no longer fits, counting every worker's finished trials, the running ones at full cost, the
retraining of the top k (reserved from the start) and optionally the distillation (`nasdd.cost.SearchBudget`).

Strategies (`strategy=`, module `strategies`): `default` is the above; `prescreen` scores candidates with a
cheap signal, then runs synchronous successive halving on the real data, planned from the budget (modules
`halving`: the protocol, without training; `prescreen`: its trials, checkpoints and workers).

Modules: `objective` (scoring one candidate), `samplers` (samplers, pruners, objectives), `workers` (liveness,
counting, retries), `study` (the loop: `search()`), `outputs` (progress, CSV, plots), `retraining` (the top
candidates on the full data), `strategies`, `halving`, `prescreen`; `nasdd search` is `nasdd.cli.search`. Names
are imported on first use, so `config`, `samplers` and `workers` (what `nasdd search --help` reads) load no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module of this package that defines it
_EXPORTS = {
    "search": "study",
    "CandidateFailed": "objective",
    "Objective": "objective",
    "TrainingData": "objective",
    "training_data": "objective",
    "SAMPLERS": "samplers",
    "PRUNERS": "samplers",
    "OBJECTIVES": "samplers",
    "catalog": "samplers",
    "pruner_catalog": "samplers",
    "make_sampler": "samplers",
    "make_pruner": "samplers",
    "is_counted": "workers",
    "counted_trials": "workers",
    "fail_dead_trials": "workers",
    "top_trials": "outputs",
    "write_outputs": "outputs",
    "retrain": "retraining",
    "retrain_one": "retraining",
    "STRATEGIES": "strategies",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nasdd.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nasdd.search.{_EXPORTS[name]}"), name)
