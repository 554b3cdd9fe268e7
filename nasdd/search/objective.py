"""Scoring one candidate: suggest an ArchSpec, serve it from the cache or train it on the proxy, score it on val.

Trial user attributes: `arch` (JSON), `arch_key`, `proxy_id`, `recipe_key`, `params`, `flops`
(forward FLOPs per sample), `seconds`, `sample_grads`, `train_flops`, and `cached_from` on cache hits;
with a scoring recipe (`Scoring`) also `score` (the trial's value) and `score_kind`.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nasdd.arch import ArchSpec
from nasdd.cost import TOLERANCE, SearchBudget, trial_cost
from nasdd.data import DatasetBundle
from nasdd.errors import NasddError
from nasdd.search.workers import holding
from nasdd.spaces import SearchSpace
from nasdd.storage import died_here, worker_id
from nasdd.train import Monitor, TrainRecipe, train_arch
from nasdd.utils import stable_hash

if TYPE_CHECKING:
    from nasdd.distill.proxy import ProxySet
    from nasdd.validate.scoring import ScoringRecipe

Proxy: TypeAlias = "str | Path | ProxySet"  # "full" (the whole training split), a ProxySet folder or a ProxySet


class CandidateFailed(Exception):
    """A candidate that could not be trained; the trial is recorded as FAIL with the reason."""


class Surplus(Exception):
    """The study reached its trial count or spent its budget (other workers did) while this trial was being created."""


@dataclass
class TrainingData:
    """What candidates train on (a proxy or the full split) and what they are scored on: the real val
    split, or the proxy's synthetic validation set when it carries one (`scored_on` says which)."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    lr: float | None
    proxy_id: str
    provenance: dict
    scored_on: str = "real val split"


def training_data(proxy: Proxy, bundle: DatasetBundle, device: torch.device) -> TrainingData:
    """`proxy`: "full", a ProxySet folder, or a loaded ProxySet. Tensors are moved to `device` once."""
    x_val, y_val = bundle.x_val, bundle.y_val
    scored_on = f"real val split ({len(x_val)} images)"
    if isinstance(proxy, str) and proxy == "full":
        x, y, lr, pid, prov = bundle.x_train, bundle.y_train, None, f"full-{bundle.key}", {"method": "full"}
    else:
        if isinstance(proxy, str | Path):
            from nasdd.distill.proxy import ProxySet

            proxy = ProxySet.load(proxy, bundle)
        (x, y), lr, pid, prov = proxy.train_data(), proxy.lr, proxy.id, dict(proxy.provenance)
        x_val, y_val, scored_on = proxy.val_data(x_val, y_val)
    to = lambda t: t.detach().to(device)  # noqa: E731
    return TrainingData(to(x), to(y), to(x_val), to(y_val), bundle.num_classes, lr, pid, prov, scored_on)


def _cache_hit(trials: list[FrozenTrial], cache_key: str) -> FrozenTrial | None:
    """The first complete trial of the same architecture, proxy, recipe and seed."""
    same = (t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("cache_key") == cache_key)
    return next(same, None)


def _set_attrs(trial: optuna.Trial, **attrs: Any) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


RESULT_ATTRS = ("params", "flops", "val_accuracy", "val_loss", "steps", "score", "score_kind")


@dataclass(frozen=True, eq=False)
class Scoring:
    """A calibrated scoring recipe in a search: each candidate is trained by `train_member` on `bundle`'s real
    training images at `recipe.budget` of one truth training (`truth_grads` sample-gradients: the retraining
    recipe on the full training split) and its value is `score(record, recipe)`."""

    recipe: ScoringRecipe
    bundle: DatasetBundle
    truth_grads: int

    @property
    def trial_cost(self) -> int:
        """The most one candidate costs in sample-gradients (training plus forward passes): its budget, plus
        the `TOLERANCE` within which `train_member`'s matched recipe lands, so a search spends at most its budget."""
        return math.ceil(self.recipe.budget * self.truth_grads * (1 + TOLERANCE))

    def record(self) -> dict[str, Any]:
        """What config.json records under "scoring"."""
        return {**asdict(self.recipe), "key": self.recipe.key(), "truth_grads": self.truth_grads,
                "trial_grads": self.trial_cost}  # fmt: skip


@dataclass
class Objective:
    """The per-trial work: suggest, (cache | train on the proxy), score on real val."""

    space: SearchSpace
    data: TrainingData
    recipe: TrainRecipe
    objectives: list[str]
    target: float  # trials the study should hold (math.inf: only the budget stops it)
    seed: int
    device: torch.device
    eval_every: int
    threads: int = 0  # torch threads this worker may use; 0: leave torch's setting alone
    share_threads: bool = False  # divide `threads` among the trials running on this host
    budget: SearchBudget | None = None  # start a trial only when its full cost fits
    scoring: Scoring | None = None  # train and score with a calibrated scoring recipe instead of `recipe`

    @property
    def recipe_key(self) -> str:
        return self.recipe.key() if self.scoring is None else self.scoring.recipe.key()

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("worker", worker_id())
        now = trial.study.get_trials(deepcopy=False)  # one read serves the room, cache and threads checks
        if self.full(holding(trial.study, before=trial.number, trials=now)):
            trial.set_user_attr("surplus", "the study already had its trials or spent its budget when this one started")
            trial.study.stop()
            raise Surplus("study complete")
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
        if (hit := _cache_hit(now, cache_key)) is not None:
            _set_attrs(trial, **{k: hit.user_attrs[k] for k in RESULT_ATTRS if k in hit.user_attrs})
            _set_attrs(
                trial,
                cached_from=hit.user_attrs.get("cached_from", hit.number),
                seconds=0.0,
                sample_grads=0,
                train_flops=0,
            )
            return hit.values if len(self.objectives) > 1 else hit.values[0]
        self._set_threads(now)
        return self._train(trial, spec)

    def full(self, held: list[FrozenTrial]) -> bool:
        """Whether the trials holding a place leave no room for one more (by count or by budget)."""
        return len(held) >= self.target or (self.budget is not None and self.budget.room(held) < 1)

    def _set_threads(self, trials: list[FrozenTrial]) -> None:
        """Give this training its share of the torch threads: workers (and `--jobs`) on one host would
        otherwise each start torch's full count and oversubscribe the cores."""
        if not self.threads:
            return
        n = 1
        if self.share_threads:
            host = socket.gethostname()
            running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            here = [t for t in running if str(t.user_attrs["worker"]).rpartition(":")[0] == host]
            n = max(1, sum(not died_here(t.user_attrs["worker"]) for t in here))
        if torch.get_num_threads() != max(1, self.threads // n):
            torch.set_num_threads(max(1, self.threads // n))

    def _train(self, trial: optuna.Trial, spec: ArchSpec) -> float | list[float]:
        try:
            values, reason = self._fit(trial, spec) if self.scoring is None else self._score(trial, spec, self.scoring)
        except (RuntimeError, ValueError, MemoryError, NasddError) as exc:  # CUDA OOM is a RuntimeError
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            values, reason = None, f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        if values is not None:
            return values if len(values) > 1 else values[0]
        trial.set_user_attr("fail_reason", reason or "unknown failure")
        raise CandidateFailed(reason)

    def _values(self, first: float, params: int, flops: int) -> list[float]:
        """The trial's values: `first` (val accuracy or the score), then params or flops per extra objective."""
        return [first, *(params if o == "params" else flops for o in self.objectives[1:])]

    def _fit(self, trial: optuna.Trial, spec: ArchSpec) -> tuple[list[float] | None, str]:
        """Train on the proxy with the recipe, report val accuracy to the pruner; (values or None, failure)."""
        d = self.data
        start = time.perf_counter()

        def on_eval(unit: int, acc: float) -> None:
            trial.report(acc, unit)
            if trial.should_prune():
                steps = self.recipe.steps is not None
                done = replace(self.recipe, steps=unit) if steps else replace(self.recipe, epochs=unit)
                spent = trial_cost(done, len(d.x))  # exact: the first `unit` epochs (or steps) of the recipe
                _set_attrs(trial, pruned_at=unit, seconds=time.perf_counter() - start, sample_grads=spent)
                raise optuna.TrialPruned(f"val accuracy {acc:.4f} at {unit}")

        res = train_arch(
            spec,
            d.x,
            d.y,
            self.recipe,
            num_classes=d.num_classes,
            seed=self.seed,
            device=self.device,
            eval_data=(d.x_val, d.y_val),
            monitor=Monitor(eval_every=self.eval_every, on_eval=on_eval),
        )
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
        return (self._values(res.accuracy, res.params, res.flops_per_sample) if res.ok else None), res.error or ""

    def _score(self, trial: optuna.Trial, spec: ArchSpec, s: Scoring) -> tuple[list[float] | None, str]:
        """Train with the scoring recipe on real training images; the value is its score (higher is better)."""
        from nasdd.validate.scoring import score, score_of, spent_grads, train_member

        r, bn = s.recipe, s.recipe.bn_images > 0
        rec = train_member(spec, s.bundle, r, self.seed, truth_grads=s.truth_grads, bn_images=r.bn_images,
                           device=self.device)  # fmt: skip
        grads = spent_grads(rec)
        _set_attrs(trial, steps=rec["steps"], seconds=rec["seconds"], sample_grads=grads, score_kind=r.score)
        if rec["status"] != "ok":
            return None, rec.get("error") or "non-finite val loss after training"
        value = score(rec, r)
        _set_attrs(
            trial,
            params=rec["params"],
            flops=rec["flops"],
            val_accuracy=score_of(rec, "val_acc", bn),  # BatchNorm statistics re-estimated when the recipe does
            val_loss=-score_of(rec, "val_loss", bn),
            score=value,
            train_flops=3 * rec["flops"] * grads,
        )
        if not math.isfinite(value):
            return None, f"score {r.score} is not finite"
        return self._values(value, rec["params"], rec["flops"]), ""
