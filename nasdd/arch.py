"""ArchSpec: a frozen, hashable, JSON round-trippable description of one architecture."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nasdd.utils import stable_hash


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ArchSpec:
    """A model family plus its parameters (sorted), e.g. ArchSpec.make("convnet", depth=3, width=128).

    `key()` is a stable digest: the same architecture has the same key in every process and run.
    """

    family: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def make(cls, family: str, **params: Any) -> ArchSpec:
        return cls(family, tuple(sorted((k, _freeze(v)) for k, v in params.items())))

    def __getitem__(self, name: str) -> Any:
        return dict(self.params)[name]

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **{k: _thaw(v) for k, v in self.params}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        d = dict(d)
        return cls.make(d.pop("family"), **d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))

    def key(self) -> str:
        return stable_hash(self.to_dict(), 16)

    def short(self) -> str:
        """A readable one-line name, e.g. `convnet(activation=relu,depth=3,...)`."""
        return f"{self.family}({','.join(f'{k}={_thaw(v)}' for k, v in self.params)})"

    def __str__(self) -> str:
        return self.short()
