"""Pools of architectures to audit: a balanced draw from a space, a JSON-lines file, or an Optuna study.

`draw_pool` is a Latin-hypercube-style stratified draw: for every parameter it deals each option
(or, for float/log-int ranges, each of N equal strata) about equally often over the N members, shuffles
the columns independently with a seeded generator, then repairs duplicate members by swapping values
between members (which keeps the balance). Conditional parameters are dealt among the members where
they are active.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.spaces import Param, SearchSpace


def _column(p: Param, n: int, rng: random.Random) -> list[Any]:
    """n values of one parameter, each option (or stratum) dealt about n / options times."""
    options = p.options()
    if p.kind == "int" and p.log:
        options = None
    if options is not None:
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
        raise NasddError(f"--pool must be a positive integer, got {n}")
    if space.finite and n > space.size:
        raise NasddError(f"--pool {n} exceeds the {space.size} members of search space {space.name}")
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


def read_archs(path: str | Path) -> list[ArchSpec]:
    """ArchSpecs from a JSON-lines file, one dict per line (blank lines and `#` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise NasddError(f"--archs file {path} does not exist")
    pool: list[ArchSpec] = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NasddError(f"{path}:{no}: not valid JSON ({exc.msg})") from None
        if not isinstance(d, dict) or "family" not in d:
            raise NasddError(f"{path}:{no}: expected an ArchSpec object with a 'family' key")
        pool.append(ArchSpec.from_dict(d))
    if not pool:
        raise NasddError(f"--archs file {path} holds no architectures")
    return list(dict.fromkeys(pool))


def write_archs(path: str | Path, pool: list[ArchSpec]) -> None:
    from nasdd.utils import atomic_open

    with atomic_open(path) as f:
        f.writelines(a.to_json() + "\n" for a in pool)


def study_pool(study_name: str, storage: str, space: SearchSpace | None = None) -> list[ArchSpec]:
    """The distinct architectures of an Optuna study's finished trials, in trial order.

    A trial's ArchSpec is its `arch` user attribute (JSON) when present, else its parameters replayed
    through `space`.
    """
    import optuna

    from nasdd.validate.store import open_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise NasddError(f"no study {study_name!r} in storage {storage}") from None
    pool: list[ArchSpec] = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        arch = t.user_attrs.get("arch")
        if arch is not None:
            pool.append(ArchSpec.from_dict(json.loads(arch) if isinstance(arch, str) else arch))
        elif space is not None:
            pool.append(space.suggest(optuna.trial.FixedTrial(t.params)))
        else:
            raise NasddError(f"study {study_name}: trial {t.number} has no 'arch' attribute; give --space")
    if not pool:
        raise NasddError(f"study {study_name!r} has no completed trials")
    return list(dict.fromkeys(pool))
