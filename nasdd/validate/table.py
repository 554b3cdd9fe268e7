"""Truth tables: a pool's full-data training as a reusable CSV, one row per architecture (NAS-Bench style).

A row holds the ArchSpec (key, JSON, factors), params, forward FLOPs, and for every truth seed k the
test accuracy `acc_s{k}`, the cost `sample_grads_s{k}` and wall `seconds_s{k}` (a failed training has a
cost and no accuracy), then `acc_mean`. Every row also pins what the numbers mean: `dataset_key` (the
dataset and its split settings), `space`, `recipe` / `recipe_key` and `nasdd_version`. A table made
with other settings is refused with one line. Tables grow one training at a time (each written
atomically, so a stopped run loses at most the training in flight) and merge: shards from several
workers or sessions combine cell by cell.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from nasdd import __version__
from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.train import TrainRecipe, TrainResult
from nasdd.validate.truth import Scores

PINNED = ("dataset_key", "space", "recipe_key")
_SEED = re.compile(r"^acc_s(\d+)$")


def recipe_text(recipe: TrainRecipe) -> str:
    """A recipe as `key=value` pairs that `TrainRecipe.parse` reads back to the same recipe."""
    return ",".join(f"{k}={v}" for k, v in asdict(recipe).items())


class TruthTable:
    """One row per architecture (index: arch key); the pinned settings live in every row."""

    def __init__(self, frame: pd.DataFrame, meta: dict) -> None:
        self.frame = frame
        self.meta = meta

    @classmethod
    def new(cls, *, dataset: str, dataset_key: str, space: str, recipe: TrainRecipe) -> TruthTable:
        meta = {
            "dataset": dataset,
            "dataset_key": dataset_key,
            "space": space,
            "recipe": recipe_text(recipe),
            "recipe_key": recipe.key(),
        }
        return cls(pd.DataFrame(index=pd.Index([], name="arch_key")), meta)

    # -- reading -------------------------------------------------------------------------------------
    @property
    def recipe(self) -> TrainRecipe:
        return TrainRecipe.parse(self.meta["recipe"])

    def seeds(self) -> list[int]:
        return sorted(int(m.group(1)) for c in self.frame.columns if (m := _SEED.match(c)))

    def accuracies(self) -> pd.DataFrame:
        """[arch key x seed] test accuracies (NaN: not trained or failed)."""
        seeds = self.seeds()
        return self.frame[[f"acc_s{s}" for s in seeds]].set_axis(seeds, axis=1).astype(float)

    def training_grads(self) -> float:
        """Sample-gradients of one truth training: the median over every member and seed recorded."""
        cols = [c for c in self.frame.columns if c.startswith("sample_grads_s")]
        return float(self.frame[cols].stack().median())

    def archs(self) -> list[ArchSpec]:
        return [ArchSpec.from_json(a) for a in self.frame["arch"]] if len(self.frame) else []

    def has(self, arch: ArchSpec, seed: int) -> bool:
        """Was `arch` trained with `seed` (successfully or not)?"""
        col = f"sample_grads_s{seed}"
        k = arch.key()
        return col in self.frame and k in self.frame.index and not pd.isna(self.frame.at[k, col])

    def check(self, *, dataset_key: str | None = None, space: str | None = None, recipe_key: str | None = None) -> None:
        """Refuse, in one line, a table made on another dataset split, space or recipe."""
        want = {"dataset_key": dataset_key, "space": space, "recipe_key": recipe_key}
        for k, v in want.items():
            if v is not None and self.meta.get(k) != v:
                raise NasddError(
                    f"truth table was made with {k} {self.meta.get(k)!r}, not {v!r}; "
                    "use a table made with the same dataset, space and recipe, or build one with `nasdd truth`"
                )

    # -- writing -------------------------------------------------------------------------------------
    def record(self, arch: ArchSpec, seed: int, result: TrainResult, factors: Sequence[str]) -> None:
        """Store one training of `arch` with `seed` (a failed one keeps its cost and no accuracy)."""
        k = arch.key()
        if k not in self.frame.index:
            row = {"arch": arch.to_json(), **{f: arch.get(f) for f in factors}}
            self.frame = pd.concat([self.frame, pd.DataFrame([row], index=pd.Index([k], name="arch_key"))])
        if result.params:
            self.frame.loc[k, ["params", "flops"]] = [result.params, result.flops_per_sample]
        self.frame.loc[k, f"acc_s{seed}"] = result.accuracy if result.ok else math.nan
        self.frame.loc[k, f"sample_grads_s{seed}"] = result.sample_grads
        self.frame.loc[k, f"seconds_s{seed}"] = round(result.seconds, 3)

    def to_frame(self) -> pd.DataFrame:
        """The CSV layout: keys and factors, cost, per-seed columns, mean, then the pinned settings."""
        df = self.frame.copy()
        seeds = self.seeds()
        acc = self.accuracies()
        df["acc_mean"] = acc.mean(axis=1, skipna=True) if seeds else np.nan
        df["n_seeds"] = acc.notna().sum(axis=1) if seeds else 0
        per_seed = [f"{c}_s{s}" for s in seeds for c in ("acc", "sample_grads", "seconds")]
        first = [c for c in df.columns if c not in per_seed and c not in ("acc_mean", "n_seeds")]
        df = df[first + per_seed + ["acc_mean", "n_seeds"]]
        for k, v in {**self.meta, "nasdd_version": __version__}.items():
            df[k] = v
        return df.reset_index()

    def save(self, path: str | Path) -> None:
        from nasdd.utils import atomic_open

        with atomic_open(path) as f:
            self.to_frame().to_csv(f, index=False, float_format="%.6g")

    @classmethod
    def load(cls, path: str | Path) -> TruthTable:
        """Read a table; a file that is not one (missing columns, mixed settings) is refused."""
        path = Path(path)
        if not path.is_file():
            raise NasddError(f"truth table {path} does not exist; build it with `nasdd truth`")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise NasddError(f"truth table {path} is not a readable CSV ({exc})") from None
        needed = {"arch_key", "arch", "dataset", "recipe", *PINNED}
        if missing := sorted(needed - set(df.columns)):
            raise NasddError(f"{path} is not a truth table: column(s) {', '.join(missing)} missing")
        if len(df) == 0:
            raise NasddError(f"truth table {path} holds no rows")
        meta = {}
        for k in ("dataset", "dataset_key", "space", "recipe", "recipe_key"):
            values = df[k].astype(str).unique()
            if len(values) != 1:
                raise NasddError(f"truth table {path} mixes several {k} values: {', '.join(values)}")
            meta[k] = values[0]
        drop = [*meta, "nasdd_version", "acc_mean", "n_seeds"]
        frame = df.drop(columns=[c for c in drop if c in df]).set_index("arch_key")
        return cls(frame, meta)

    @classmethod
    def merge(cls, tables: Sequence[TruthTable]) -> TruthTable:
        """Combine shards cell by cell (a cell present in several shards keeps the first one)."""
        if not tables:
            raise NasddError("nothing to merge: give at least one truth table")
        first = tables[0]
        for t in tables[1:]:
            t.check(**{k: first.meta[k] for k in PINNED})
        frame = first.frame
        for t in tables[1:]:
            frame = frame.combine_first(t.frame)
        # the first shard's column order (combine_first may sort); `to_frame` orders the per-seed columns
        return cls(frame[list(dict.fromkeys([*first.frame.columns, *frame.columns]))], dict(first.meta))


def build(
    table: TruthTable,
    path: str | Path,
    pool: Iterable[ArchSpec],
    seeds: Sequence[int],
    train: Callable[[ArchSpec, int], TrainResult],
    *,
    factors: Sequence[str] = (),
    show_progress: bool = True,
) -> TruthTable:
    """Train every (architecture, seed) the table lacks, seed by seed (so a stopped run leaves whole
    seeds), saving the table after each training."""
    from nasdd.utils import clip, progress

    todo = [(a, s) for s in seeds for a in pool if not table.has(a, s)]
    bar = progress(total=len(todo), desc="truth", unit="training", disable=not (todo and show_progress))
    for arch, seed in todo:
        bar.set_postfix_str(f"{clip(arch.short())} seed {seed}", refresh=True)
        table.record(arch, seed, train(arch, seed), factors)
        table.save(path)
        bar.update(1)
    bar.close()
    return table


def shard(pool: Sequence[ArchSpec], spec: str | None) -> list[ArchSpec]:
    """`I/N`: every N-th member starting at I (0-based), so N workers split a pool evenly."""
    if not spec:
        return list(pool)
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise NasddError(f"`shard` expects I/N with 0 <= I < N (e.g. 0/4), got {spec!r}", params=("shard",))
    i, n = int(m.group(1)), int(m.group(2))
    return list(pool)[i::n]


def describe(table: TruthTable) -> str:
    acc = table.accuracies()
    n_full = int(acc.notna().all(axis=1).sum()) if len(acc) else 0
    return (
        f"{len(table.frame)} architectures, {n_full} with every one of {len(acc.columns)} seeds; "
        f"dataset {table.meta['dataset_key']}, space {table.meta['space']}, recipe {table.meta['recipe_key']}"
    )


SHIPPED = Path(__file__).parent  # tables installed with nasdd: truth_*.csv beside this module


def shipped(*, dataset_key: str, space: str, recipe: TrainRecipe, pool: Sequence[ArchSpec]) -> TruthTable | None:
    """A truth table shipped with nasdd made with these settings and holding every member of `pool`."""
    for path in sorted(SHIPPED.glob("truth_*.csv")):
        table = TruthTable.load(path)
        meta = (table.meta["dataset_key"], table.meta["space"], table.meta["recipe_key"])
        acc = table.accuracies()
        if meta == (dataset_key, space, recipe.key()) and all(
            a.key() in acc.index and acc.loc[a.key()].notna().all() for a in pool
        ):
            return table
    return None


def truth_scores(table: TruthTable, pool: Sequence[ArchSpec]) -> tuple[list[ArchSpec], Scores]:
    """The members of `pool` the table holds (with at least one accuracy) and their ground-truth Scores,
    arranged as if trained by `nasdd.validate.truth.ground_truth` (test split, one column per seed)."""
    from nasdd.validate.store import Job
    from nasdd.validate.truth import collect

    acc = table.accuracies()
    held = [a for a in pool if a.key() in acc.index and acc.loc[a.key()].notna().any()]
    seeds = table.seeds()
    results = {}
    for a in held:
        row = table.frame.loc[a.key()]
        for s in seeds:
            v = row.get(f"acc_s{s}", math.nan)
            results[Job(a, s, "test").key] = {
                "accuracy": float(v),
                "status": "ok" if math.isfinite(float(v)) else "failed",
                "sample_grads": int(_finite(row.get(f"sample_grads_s{s}"))),
                "seconds": _finite(row.get(f"seconds_s{s}")),
                "params": row.get("params"),
                "flops_per_sample": row.get("flops"),
            }
    return held, collect("ground_truth", "truth", held, seeds, "test", results, "accuracy")


def _finite(v: float | None) -> float:
    v = float(v) if v is not None else math.nan
    return v if math.isfinite(v) else 0.0
