"""Typed method options: every Distiller's method-specific settings are one frozen dataclass (`Options`
subclass) beside the method, with types and defaults; `Options.make` validates them in one place.

An unknown option is refused in one line that lists the valid ones; a value of the wrong type or out of its
range (each class's `check`) in one line that names the method and the option. Checks that need the data
or the network (e.g. one layer weight per block) stay in the method's `setup`. `parse` turns `--option
KEY=VALUE` strings into the field's type. Fields marked `unrecorded()` (the reference code paths,
compilation) change how a run computes, not what it computes: they are left out of `record()`, the dict a
proxy's provenance and a checkpoint's configuration keep, so proxies and checkpoints compare as before.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

import yaml

from nasdd.errors import NasddError


def unrecorded(default: Any) -> Any:
    """A field that switches a code path without changing the result: not recorded in provenance."""
    return field(default=default, metadata={"record": False})


def at_least(opts: Options, least: int, *names: str) -> None:
    """For `Options.check`: each named integer option is >= `least` (ValueError naming the first that is not)."""
    for name in names:
        if (v := getattr(opts, name)) < least:
            must = "a positive integer" if least == 1 else f"an integer >= {least}"
            raise ValueError(f"{name} must be {must}, got {v!r}")


def positive(opts: Options, *names: str) -> None:
    """For `Options.check`: each named number option is > 0 (ValueError naming the first that is not)."""
    for name in names:
        if not (v := getattr(opts, name)) > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


def _fits(value: Any, kind: Any) -> bool:
    """Whether `value` has the type `kind` (a class, a union, `list[...]`, Any); ints pass as floats."""
    if kind is Any:
        return True
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        return any(_fits(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list | tuple) and all(_fits(v, item) for v in value)
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


@dataclass(frozen=True)
class Options:
    """A method's options (none here); subclasses add typed fields with defaults."""

    @classmethod
    def kinds(cls) -> dict[str, Any]:
        """Each option's type."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def make(cls, method: str, values: dict[str, Any]) -> Self:
        """The options `values` (name -> value) override, checked: one-line NasddError on an unknown
        option or a value of the wrong type."""
        kinds = cls.kinds()
        unknown = set(values) - set(kinds)
        if unknown:
            valid = ", ".join(sorted(kinds)) or "none"
            raise NasddError(f"method {method} has no option {sorted(unknown)[0]!r}; valid options: {valid}")
        for key, value in values.items():
            if not _fits(value, kinds[key]):
                raise NasddError(f"method {method} option {key} must be {_name(kinds[key])}, got {value!r}")
        opts = cls(**values)
        try:
            opts.check()
        except ValueError as exc:
            raise NasddError(f"method {method} option {exc}") from None
        return opts

    def check(self) -> None:
        """Raise ValueError('<option> must be ..., got ...') for a value out of its range (subclasses)."""

    @classmethod
    def parse(cls, key: str, text: str) -> Any:
        """The `--option KEY=VALUE` string `text` as option `key`'s type (YAML scalars; a float field
        also takes `1e-4`, a string field any text); unknown keys pass through for `make` to refuse."""
        value = yaml.safe_load(text)
        kind = cls.kinds().get(key, Any)
        if value is None or _fits(value, kind):
            return value
        if _fits(text, kind):  # a string option whose text reads as a number or a boolean
            return text
        if text.strip().lower() == "none" and _fits(None, kind):
            return None
        if _fits(1.0, kind) and not _fits(True, kind):
            try:
                return float(text)
            except ValueError:
                pass
        return value  # `make` refuses it in one line

    def record(self) -> dict[str, Any]:
        """name -> value of the recorded options (what provenance and checkpoints keep)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("record", True)}
