"""Search spaces from YAML: categorical, integer and float parameters, with conditions.

Format (see search_spaces/*.yaml)::

    name: convnet_dc
    family: convnet            # a model family from nasdd.models.FAMILIES
    description: ...
    params:                    # in order; a `when` may only refer to parameters above it
      depth: {choices: [1, 2, 3, 4]}
      width: {int: [16, 128], log: true}      # or {float: [lo, hi], log: bool}, or {value: x}
      width_2: {choices: [32, 64], when: {depth: [2, 3, 4]}}   # only present when depth is 2, 3 or 4
    default: {depth: 3, ...}   # optional: the space's reference member

A space can `suggest(trial)` for Optuna, `sample(rng)`, `enumerate()` when finite, and tell its `size`.
`draw_pool` draws n distinct members spread evenly over every factor (Latin-hypercube style): for every
parameter it deals each option (or, for float/log-int ranges, each of n equal strata) about equally often
over the n members, shuffles the columns independently with a seeded generator, then repairs duplicate
members by swapping values between members (which keeps the balance). Conditional parameters are dealt
among the members where they are active. Validation audits such pools; distillation matches through them.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError

if TYPE_CHECKING:
    from optuna.trial import BaseTrial


def _spaces_dir() -> Path:
    """The shipped spaces: `nasdd/search_spaces` in an installed wheel, the repository's top-level
    `search_spaces/` in a checkout (editable or on PYTHONPATH)."""
    here = Path(__file__).resolve().parent
    installed = here / "search_spaces"
    return installed if installed.is_dir() else here.parent / "search_spaces"


SPACES_DIR = _spaces_dir()
TOP_KEYS = {"name", "family", "description", "params", "default"}
KINDS = ("choices", "int", "float", "value")
PARAM_KEYS = {*KINDS, "log", "step", "when"}


@dataclass(frozen=True)
class Param:
    """One parameter: exactly one of choices / int range / float range / fixed value."""

    name: str
    kind: str
    spec: Any
    log: bool = False
    step: int = 1
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when.items())

    def options(self) -> list[Any]:
        """Every value of a finite parameter (a float range has none: an error)."""
        if self.kind == "choices":
            return list(self.spec)
        if self.kind == "value":
            return [self.spec]
        if self.kind == "int":
            return list(range(self.spec[0], self.spec[1] + 1, self.step))
        raise NasddError(f"parameter {self.name} is a float range and has no finite list of options")


@dataclass(frozen=True)
class SearchSpace:
    """A loaded YAML space: the family and its ordered parameters."""

    name: str
    family: str
    params: tuple[Param, ...]
    default: dict[str, Any] | None = None
    description: str = ""
    path: str = ""

    def _spec(self, values: dict[str, Any]) -> ArchSpec:
        return ArchSpec.make(self.family, **values)

    def suggest(self, trial: BaseTrial) -> ArchSpec:
        """Ask an Optuna trial for every active parameter."""
        values: dict[str, Any] = {}
        for p in self.params:
            if not p.active(values):
                continue
            if p.kind == "choices":
                values[p.name] = trial.suggest_categorical(p.name, list(p.spec))
            elif p.kind == "int":
                lo, hi = p.spec
                step = 1 if p.log else p.step
                values[p.name] = trial.suggest_int(p.name, lo, hi, step=step, log=p.log)
            elif p.kind == "float":
                values[p.name] = trial.suggest_float(p.name, p.spec[0], p.spec[1], log=p.log)
            else:
                values[p.name] = p.spec
        return self._spec(values)

    def sample(self, rng: random.Random) -> ArchSpec:
        """One member drawn uniformly per parameter (log-uniform where `log`)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if not p.active(values):
                continue
            if p.kind == "float":
                lo, hi = p.spec
                values[p.name] = math.exp(rng.uniform(math.log(lo), math.log(hi))) if p.log else rng.uniform(lo, hi)
            elif p.kind == "int" and p.log:
                lo, hi = p.spec
                values[p.name] = min(hi, int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))
            else:
                values[p.name] = rng.choice(p.options())
        return self._spec(values)

    @property
    def finite(self) -> bool:
        return all(p.kind != "float" for p in self.params)

    def enumerate(self) -> Iterator[ArchSpec]:
        """Every member, in a fixed order (finite spaces only)."""
        if not self.finite:
            raise NasddError(f"search space {self.name} has float parameters and cannot be enumerated")

        def expand(i: int, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if i == len(self.params):
                yield dict(values)
                return
            p = self.params[i]
            if not p.active(values):
                yield from expand(i + 1, values)
                return
            for v in p.options():
                values[p.name] = v
                yield from expand(i + 1, values)
                del values[p.name]

        for values in expand(0, {}):
            yield self._spec(values)

    @property
    def size(self) -> int | float:
        """The number of members (math.inf with float parameters)."""
        return sum(1 for _ in self.enumerate()) if self.finite else math.inf

    def default_arch(self) -> ArchSpec:
        if self.default is None:
            return next(self.enumerate()) if self.finite else self.sample(random.Random(0))
        return self._spec(self.default)

    def factors(self) -> list[str]:
        """Parameter names that vary (more than one option)."""
        return [p.name for p in self.params if p.kind == "float" or len(p.options()) > 1]

    def grid(self) -> dict[str, list[Any]]:
        """Optuna GridSampler search space (finite spaces only)."""
        if not self.finite:
            raise NasddError(f"search space {self.name} has float parameters; the grid sampler needs a finite one")
        return {p.name: p.options() for p in self.params}


def _fail(path: str, key: str, msg: str) -> NasddError:
    return NasddError(f"{path}: key {key}: {msg}")


def _parse_param(path: str, name: str, raw: Any, family_rules: dict, seen: list[str]) -> Param:
    key = f"params.{name}"
    if not isinstance(raw, dict):
        raise _fail(path, key, f"expected a mapping with one of {', '.join(KINDS)}, got {raw!r}")
    unknown = set(raw) - PARAM_KEYS
    if unknown:
        raise _fail(
            path, f"{key}.{sorted(unknown)[0]}", f"unknown key; expected one of {', '.join(sorted(PARAM_KEYS))}"
        )
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise _fail(path, key, f"expected exactly one of {', '.join(KINDS)}, got {kinds or 'none'}")
    kind, spec = kinds[0], raw[kinds[0]]
    if name not in family_rules:
        raise _fail(path, key, f"unknown parameter for this family; expected one of {', '.join(family_rules)}")
    rule = family_rules[name]
    if kind == "choices":
        if not isinstance(spec, list) or not spec:
            raise _fail(path, f"{key}.choices", "expected a non-empty list")
        if len(set(map(repr, spec))) != len(spec):
            raise _fail(path, f"{key}.choices", "has repeated values")
        for i, v in enumerate(spec):
            if expected := rule(v):
                raise _fail(path, f"{key}.choices[{i}]", f"invalid value {v!r}; expected {expected}")
        spec = tuple(spec)
    elif kind in ("int", "float"):
        ok_type = int if kind == "int" else (int, float)
        if not (
            isinstance(spec, list)
            and len(spec) == 2
            and all(isinstance(v, ok_type) and not isinstance(v, bool) for v in spec)
        ):
            raise _fail(path, f"{key}.{kind}", f"expected [low, high] of {kind}s, got {spec!r}")
        if spec[0] > spec[1] or (raw.get("log") and spec[0] <= 0):
            raise _fail(
                path, f"{key}.{kind}", f"expected 0 < low <= high for log ranges and low <= high otherwise, got {spec}"
            )
        if kind == "int":
            for v in spec:
                if expected := rule(v):
                    raise _fail(path, f"{key}.int", f"invalid bound {v!r}; expected {expected}")
        spec = tuple(spec)
    elif expected := rule(spec):
        raise _fail(path, f"{key}.value", f"invalid value {spec!r}; expected {expected}")
    for flag, typ in (("log", bool), ("step", int)):
        if flag in raw and not isinstance(raw[flag], typ):
            raise _fail(path, f"{key}.{flag}", f"expected a {typ.__name__}, got {raw[flag]!r}")
    when = raw.get("when", {})
    if not isinstance(when, dict):
        raise _fail(path, f"{key}.when", "expected a mapping of earlier parameter -> allowed values")
    for dep, allowed in when.items():
        if dep not in seen:
            raise _fail(path, f"{key}.when.{dep}", f"refers to no earlier parameter; expected one of {seen or 'none'}")
        if not isinstance(allowed, list) or not allowed:
            raise _fail(path, f"{key}.when.{dep}", "expected a non-empty list of values")
    return Param(
        name, kind, spec, bool(raw.get("log", False)), int(raw.get("step", 1)), {k: tuple(v) for k, v in when.items()}
    )


def parse_space(doc: Any, path: str = "<yaml>") -> SearchSpace:
    """Validate a parsed YAML document into a SearchSpace; errors name the file and the key."""
    from nasdd.models import FAMILIES  # torch: imported only when a space is parsed

    if not isinstance(doc, dict):
        raise NasddError(f"{path}: expected a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise _fail(path, sorted(unknown)[0], f"unknown key; expected one of {', '.join(sorted(TOP_KEYS))}")
    for required in ("family", "params"):
        if required not in doc:
            raise _fail(path, required, "missing")
    family = doc["family"]
    if family not in FAMILIES:
        raise _fail(path, "family", f"unknown family {family!r}; expected one of {', '.join(FAMILIES.names())}")
    rules = FAMILIES.get(family).rules
    if not isinstance(doc["params"], dict) or not doc["params"]:
        raise _fail(path, "params", "expected a non-empty mapping of parameter name -> definition")
    params: list[Param] = []
    for name, raw in doc["params"].items():
        params.append(_parse_param(path, str(name), raw, rules, [p.name for p in params]))
    default = doc.get("default")
    if default is not None:
        if not isinstance(default, dict):
            raise _fail(path, "default", "expected a mapping of parameter -> value")
        for k, v in default.items():
            if k not in rules or rules[k](v):
                raise _fail(path, f"default.{k}", f"invalid: {v!r}")
    name = str(doc.get("name", Path(path).stem))
    return SearchSpace(name, family, tuple(params), default, str(doc.get("description", "")), path)


def space_names() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space by file path or by name (a file in the shipped search_spaces/ folder)."""
    path = Path(name_or_path)
    if not path.exists():
        candidate = SPACES_DIR / f"{name_or_path}.yaml"
        if not candidate.exists():
            raise NasddError(
                f"unknown search space {str(name_or_path)!r}; give a YAML path or one of: {', '.join(space_names())}"
            )
        path = candidate
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise NasddError(f"{path}: malformed YAML{where}: {problem}; fix the file") from exc
    return parse_space(doc, str(path))


# ------------------------------------------------------------------------------ balanced draws
def _column(p: Param, n: int, rng: random.Random) -> list[Any]:
    """n values of one parameter, each option (or stratum) dealt about n / options times."""
    if p.kind != "float" and not (p.kind == "int" and p.log):
        options = p.options()
        reps = options * (n // len(options)) + rng.sample(options, n % len(options))
        rng.shuffle(reps)
        return reps
    lo, hi = p.spec
    u = [(i + rng.random()) / n for i in range(n)]
    rng.shuffle(u)
    if p.log:
        vals = [math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))) for x in u]
    else:
        vals = [lo + x * (hi - lo) for x in u]
    return [min(hi, int(round(v))) for v in vals] if p.kind == "int" else vals


def _deal(space: SearchSpace, n: int, rng: random.Random) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for p in space.params:
        active = [r for r in rows if p.active(r)]
        for r, v in zip(active, _column(p, len(active), rng), strict=True):
            r[p.name] = v
    return rows


def _repair(space: SearchSpace, rows: list[dict[str, Any]], rng: random.Random, tries: int = 200) -> None:
    """Make members unique by swapping one factor's values between two members (balance preserved)."""
    factors = [p.name for p in space.params if p.name in space.factors() and not p.when]
    for _ in range(tries):
        counts = Counter(json.dumps(r, sort_keys=True) for r in rows)
        dups = [i for i, r in enumerate(rows) if counts[json.dumps(r, sort_keys=True)] > 1]
        if not dups or not factors:
            return
        for i in dups:
            j, f = rng.randrange(len(rows)), rng.choice(factors)
            a, b = dict(rows[i]), dict(rows[j])
            a[f], b[f] = b[f], a[f]
            if all(p.active(a) == (p.name in a) and p.active(b) == (p.name in b) for p in space.params):
                rows[i], rows[j] = a, b


def draw_pool(space: SearchSpace, n: int, seed: int = 0) -> list[ArchSpec]:
    """`n` distinct members of `space`, spread evenly over every factor, reproducible by `seed`."""
    if n < 1:
        raise NasddError(f"`pool` must be a positive integer, got {n}", params=("pool",))
    if space.finite and n > space.size:
        raise NasddError(f"`pool` {n} exceeds the {space.size} members of search space {space.name}", params=("pool",))
    rng = random.Random(seed)
    rows = _deal(space, n, rng)
    _repair(space, rows, rng)
    pool = list(dict.fromkeys(ArchSpec.make(space.family, **r) for r in rows))
    while len(pool) < n:  # rare: repair could not separate every duplicate; top up with fresh draws
        spec = space.sample(rng)
        if spec not in pool:
            pool.append(spec)
    return pool


def factor_counts(pool: list[ArchSpec], space: SearchSpace) -> dict[str, Counter]:
    """How often each value of each varying factor appears in `pool` (for checking the spread)."""
    return {f: Counter(a.get(f) for a in pool if a.get(f) is not None) for f in space.factors()}
