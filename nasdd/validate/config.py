"""`AuditConfig`: every setting of an audit, typed, frozen and checked once (torch-free; recipes are parsed by
`AuditConfig.from_text`, or given as `TrainRecipe`s)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nasdd.config import recipes_from_json, to_json
from nasdd.errors import NasddError
from nasdd.validate.stats import DEFAULT_KS

if TYPE_CHECKING:
    from nasdd.train import TrainRecipe
    from nasdd.validate.scoring import ScoringRecipe

RECIPE_FIELDS = ("truth_recipe", "proxy_recipe")
TUPLE_FIELDS = ("proxy_epochs", "early_epochs", "ks")


@dataclass(frozen=True)
class AuditConfig:
    """How an audit runs (see `nasdd.validate.audit.validate`).

    `peers`: comma-separated peer names, "all" or None (every peer), "" (none). `truth_recipe`: None is `full`,
    or the truth table's. `proxy_recipe`: None is `proxy`. `proxy_epochs` sweeps the proxy training length.
    `early_epochs`: the early-stopping peer's lengths in full-data epochs (None: matched to the proxies'
    cost). Subset peers use `ipc` (default: the proxies' ipcs, else 10) and the distillation preset
    `subset_preset` where the method has it. `storage`: the result cache (an Optuna storage URL; None:
    `<out>/results.db`, or in memory without an output folder). `ks`, `n_resamples`, `bootstrap_seed`: the
    rank statistics. `zc_batch`: images of the zero-cost scores' batch. `scoring`: a recipe whose row is added.
    `stack_members`: pool members whose truth fits the `stack` peer (drawn with `bootstrap_seed`).
    """

    peers: str | None = None
    truth_seeds: int = 2
    truth_recipe: TrainRecipe | None = None
    proxy_recipe: TrainRecipe | None = None
    proxy_seeds: int = 1
    proxy_epochs: tuple[int, ...] | None = None
    early_epochs: tuple[float, ...] | None = None
    ipc: int | None = None
    subset_preset: str | None = None
    storage: str | None = None
    ks: tuple[int | str, ...] = DEFAULT_KS
    n_resamples: int = 1000
    bootstrap_seed: int = 0
    zc_batch: int = 64
    scoring: ScoringRecipe | None = None
    stack_members: int = 20

    def __post_init__(self) -> None:
        for name in TUPLE_FIELDS:  # lists (e.g. from JSON) become tuples; an empty sweep is no sweep (None)
            v = getattr(self, name)
            object.__setattr__(self, name, tuple(v) if v or (name == "ks" and v is not None) else None)
        if self.stack_members < 2:
            raise NasddError(f"`stack_members` must be at least 2, got {self.stack_members}", params=("stack_members",))
        for name in ("truth_seeds", "proxy_seeds", "n_resamples", "zc_batch", "ipc"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise NasddError(f"`{name}` must be at least 1, got {v}", params=(name,))
        if self.early_epochs and min(self.early_epochs) <= 0:
            raise NasddError(
                f"`early_epochs` must be > 0 full-data epochs, got {min(self.early_epochs):g}", params=("early_epochs",)
            )
        if self.proxy_epochs and min(self.proxy_epochs) < 1:
            got = list(self.proxy_epochs)
            raise NasddError(f"`proxy_epochs` must be at least 1 each, got {got}", params=("proxy_epochs",))

    @classmethod
    def from_text(
        cls, *, truth_recipe: str | None = None, proxy_recipe: str | None = None, **settings: Any
    ) -> AuditConfig:
        """A config from command-line-style text: recipes (`full,epochs=8`, `epochs=50`: over `full` and
        `proxy`) parsed here."""
        from nasdd.train import TrainRecipe

        return cls(
            truth_recipe=None if truth_recipe is None else TrainRecipe.parse(truth_recipe, "full"),
            proxy_recipe=None if proxy_recipe is None else TrainRecipe.parse(proxy_recipe, "proxy"),
            **settings,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values (what config.json records under "audit"; the storage masked)."""
        d = to_json(self, RECIPE_FIELDS)
        d["scoring"] = None if self.scoring is None else asdict(self.scoring)
        d.update({k: None if d[k] is None else list(d[k]) for k in TUPLE_FIELDS})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditConfig:
        """The inverse of `to_dict` (a config.json's "audit")."""
        from nasdd.validate.scoring import ScoringRecipe

        d = recipes_from_json(d, RECIPE_FIELDS)
        d["scoring"] = None if d.get("scoring") is None else ScoringRecipe.from_dict(d["scoring"])
        return cls(**d)
