"""What the frozen configs (`nasdd.search.config.SearchConfig`, `nasdd.validate.config.AuditConfig`) share: their
JSON form in the config.json a run writes (torch-free; `TrainRecipe` fields as dicts, the storage masked)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from nasdd.storage import masked


def to_json(config: Any, recipes: tuple[str, ...]) -> dict[str, Any]:
    """Every field of the dataclass `config` as JSON values: the `recipes` fields (TrainRecipes) as dicts and the
    `storage` URL with its password masked."""
    d = {f.name: getattr(config, f.name) for f in fields(config)}
    d.update({k: None if d[k] is None else asdict(d[k]) for k in recipes})
    d["storage"] = masked(d["storage"])
    return d


def recipes_from_json(d: dict[str, Any], recipes: tuple[str, ...]) -> dict[str, Any]:
    """`d` (a `to_json` result) with its `recipes` fields as TrainRecipes again."""
    from nasdd.train import TrainRecipe

    return {**d, **{k: None if d.get(k) is None else TrainRecipe(**d[k]) for k in recipes}}
