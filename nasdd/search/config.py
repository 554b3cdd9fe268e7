"""`SearchConfig`: every setting of a search, typed, frozen and checked once (torch-free; recipes are parsed
by `SearchConfig.from_text`, or given as `TrainRecipe`s)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nasdd.arch import ArchSpec
from nasdd.config import recipes_from_json, to_json
from nasdd.errors import NasddError, unknown_name
from nasdd.search.samplers import PRUNERS, SAMPLERS, parse_objective
from nasdd.search.strategies import check as check_strategy
from nasdd.search.workers import HEARTBEAT_S

if TYPE_CHECKING:
    from nasdd.train import TrainRecipe
    from nasdd.validate.scoring import ScoringRecipe

RECIPE_FIELDS = ("recipe", "retrain_recipe")


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs (see `nasdd.search.study.search`).

    `trials`: finished trials the study should hold (None: 20, or only `budget` stops the search).
    `recipe`: the candidates' training (None: `proxy`, or `full` when the proxy is "full"); a learned proxy
    lr replaces its lr. `budget`: total sample-gradients of every worker's trials, the retraining of the
    top `retrain_top` and, with `budget_includes_distill`, the distillation. `heartbeat`: seconds between
    trial heartbeats in RDB storages. `threads`: torch threads per trial (None: shared among the trials on
    this host). `strategy` "prescreen" uses `prescreen` (the cheap signal), `eta`, `archs` and `budget`.
    `scoring`: a calibrated scoring recipe (`nasdd calibrate`) that trains and scores every candidate on
    real training images instead of `recipe` (its budget a fraction of one `retrain_recipe` training on the
    full training split); only with the default strategy and no pruner.
    """

    study_name: str
    trials: int | None = None
    timeout: float | None = None
    storage: str | None = None
    sampler: str = "tpe"
    pruner: str = "none"
    objective: str = "accuracy"
    jobs: int = 1
    seed: int = 0
    top: int = 5
    recipe: TrainRecipe | None = None
    retrain_top: int = 0
    retrain_recipe: TrainRecipe | None = None  # None: `full`
    heartbeat: int | None = HEARTBEAT_S
    threads: int | None = None
    budget: int | None = None  # sample-gradients
    budget_includes_distill: bool = False
    strategy: str = "default"
    prescreen: str = "snip"
    eta: int = 3
    archs: tuple[ArchSpec, ...] | None = None
    scoring: ScoringRecipe | None = None

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        if self.sampler not in SAMPLERS:
            raise unknown_name("sampler", self.sampler, list(SAMPLERS))
        if self.pruner not in PRUNERS:
            raise unknown_name("pruner", self.pruner, PRUNERS)
        parse_objective(self.objective)
        for name in ("trials", "jobs", "budget", "threads", "heartbeat"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise NasddError(f"`{name}` must be at least 1, got {v}", params=(name,))
        if self.top < 0 or self.retrain_top < 0:
            raise NasddError(
                f"`top` and `retrain_top` must be >= 0, got {self.top} and {self.retrain_top}",
                params=("top", "retrain_top"),
            )
        if self.timeout is not None and not self.timeout > 0:
            raise NasddError(
                f"`timeout` must be > 0 seconds, got {self.timeout:g}; leave it out for no limit", params=("timeout",)
            )
        if self.eta < 2:
            raise NasddError(f"`eta` must be at least 2, got {self.eta}", params=("eta",))
        if self.budget_includes_distill and self.budget is None:
            raise NasddError("`budget_includes_distill` needs a `budget`", params=("budget_includes_distill", "budget"))
        if self.strategy == "prescreen" and self.budget is None:
            raise NasddError("the prescreen strategy needs a budget (sample-gradients): it plans its rungs from it")
        if self.archs is not None and not self.archs:
            raise NasddError("archs is empty; give at least one architecture or leave it out")
        if self.scoring is not None:
            self._check_scoring()

    def _check_scoring(self) -> None:
        """A scoring recipe replaces the candidates' recipe and reports no intermediate values."""
        if self.pruner != "none":
            raise NasddError(f"a `scoring` recipe reports no intermediate values to prune on; `pruner` must be none, "
                             f"not {self.pruner!r}", params=("pruner", "scoring"))  # fmt: skip
        if self.strategy != "default":
            raise NasddError(f"a `scoring` recipe works with the default `strategy`, not {self.strategy!r}",
                             params=("strategy", "scoring"))  # fmt: skip
        if self.recipe is not None:
            raise NasddError("a `scoring` recipe sets the candidates' training; leave `recipe` out",
                             params=("recipe", "scoring"))  # fmt: skip

    @classmethod
    def from_text(
        cls, *, recipe: str | None = None, retrain_recipe: str | None = None, budget: str | int | None = None,
        **settings: Any,
    ) -> SearchConfig:  # fmt: skip
        """A config from command-line-style text: recipes (`proxy,epochs=5`) and a budget (`648k`) parsed here."""
        from nasdd.cost import parse_grads
        from nasdd.train import TrainRecipe

        return cls(
            recipe=TrainRecipe.parse(recipe) if recipe is not None else None,
            retrain_recipe=TrainRecipe.parse(retrain_recipe) if retrain_recipe is not None else None,
            budget=parse_grads(budget) if budget is not None else None,
            **settings,
        )

    @property
    def target(self) -> float:
        """Finished trials to reach: `trials`, else 20, or unbounded (math.inf) when a budget stops the search."""
        return self.trials if self.trials is not None else (math.inf if self.budget is not None else 20)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values (what config.json records under "search"; the storage masked)."""
        d = to_json(self, RECIPE_FIELDS)
        d["archs"] = None if self.archs is None else [a.to_dict() for a in self.archs]
        d["scoring"] = None if self.scoring is None else asdict(self.scoring)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        """The inverse of `to_dict` (a config.json's "search")."""
        d = recipes_from_json(d, RECIPE_FIELDS)
        d["archs"] = None if d.get("archs") is None else tuple(ArchSpec.from_dict(a) for a in d["archs"])
        if d.get("scoring") is not None:
            from nasdd.validate.scoring import ScoringRecipe

            d["scoring"] = ScoringRecipe.from_dict(d["scoring"])
        return cls(**d)
