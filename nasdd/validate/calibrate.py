"""Calibrating a scoring recipe on a truth table, and judging it on members it never saw.

The grid: every member is scored ONCE per training configuration of `GRID` (passes over real images, lr,
batch; `nasdd.validate.scoring.ScoreCache`), and one training yields every score kind with and without
BatchNorm re-estimation. A calibration is then an Optuna study over the grid's categorical axes that
maximises Kendall tau on the calibration members only (a table lookup per trial); the evaluation members
are scored by the chosen recipe and compared, paired, with a baseline recipe on the same members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from nasdd.errors import NasddError
from nasdd.validate import stats
from nasdd.validate.scoring import CURVE_POINTS, SCORE_KINDS, ScoreCache, ScoringRecipe, score

# (passes, lr, batch_size) in priority order; passes 0 = every training image (early stopping)
GRID: tuple[tuple[float, float, int], ...] = (
    (0, 0.02, 128),  # today's early stopping (the truth recipe, shortened)
    (0, 0.05, 128),
    (2, 0.02, 128),
    (0, 0.01, 128),
    (8, 0.02, 128),
    (0, 0.02, 32),
    (2, 0.05, 128),
    (30, 0.02, 128),
    (0, 0.1, 128),
    (200, 0.01, 128),  # ~ a random 10-per-class subset trained for hundreds of steps
    (8, 0.05, 128),
    (2, 0.02, 32),
)
OVERHEAD_SHARE = 0.05  # of the budget, for BN re-estimation (half) and the val curve (half)


def grid_recipes(budget: float, truth_grads: float) -> tuple[list[ScoringRecipe], int]:
    """The grid's training configurations at `budget`, and the BN images every training also records.

    The forward-pass overhead is `OVERHEAD_SHARE` of the budget (3 forwards per sample-gradient), half for
    BN re-estimation images, half for the val curve's `CURVE_POINTS` evaluations.
    """
    forwards = OVERHEAD_SHARE * budget * truth_grads * 3
    bn = int(forwards / 2)
    curve = max(1, int(forwards / 2 / CURVE_POINTS))
    base = ScoringRecipe(budget=budget, curve_images=curve)
    return [replace(base, passes=p, lr=lr, batch_size=bs) for p, lr, bs in GRID], bn


# -- the grid as a table -------------------------------------------------------------------------------
BN_KINDS = ("val_acc", "val_loss")  # the kinds BatchNorm re-estimation can change


@dataclass
class Grid:
    """Scores of every grid recipe on a pool: `scores` is [arch key x recipe key], `recipes` maps the keys,
    `config` maps a recipe key to its training configuration's index in `GRID`."""

    dataset_key: str
    scores: pd.DataFrame
    recipes: dict[str, ScoringRecipe]
    config: dict[str, int]
    seconds: float = 0.0
    sample_grads: float = 0.0

    def key_of(self, config: int, bn: bool, score: str) -> str | None:
        for k, r in self.recipes.items():
            if self.config[k] == config and r.score == score and (r.bn_images > 0) == (bn and score in BN_KINDS):
                return k
        return None

    def axes(self) -> tuple[list[int], list[str]]:
        return sorted(set(self.config.values())), list(SCORE_KINDS)


def grid_table(
    cache: ScoreCache, dataset_key: str, keys: Sequence[str], recipes: Sequence[ScoringRecipe], bn_images: int,
    seed: int = 0,
) -> Grid:  # fmt: skip
    """Every recipe of the grid whose training configuration is cached for every member, as score columns."""
    cols: dict[str, list[float]] = {}
    grid = Grid(dataset_key, pd.DataFrame(index=list(keys)), {}, {})
    for i, r in enumerate(recipes):
        got = [cache.get(dataset_key, r, bn_images, k, seed) for k in keys]
        recs = [x for x in got if x is not None]
        if len(recs) < len(got):
            continue
        grid.seconds += sum(x.get("seconds", 0.0) for x in recs)
        grid.sample_grads += sum(x.get("sample_grads", 0) for x in recs)
        for kind in SCORE_KINDS:
            for bn in (0, bn_images) if kind in BN_KINDS else (0,):
                rr = replace(r, score=kind, bn_images=bn)
                cols[rr.key()] = [score(x, rr) for x in recs]
                grid.recipes[rr.key()] = rr
                grid.config[rr.key()] = i
    grid.scores = pd.DataFrame(cols, index=list(keys), dtype=float)
    return grid


# -- held-out splits -------------------------------------------------------------------------------------
def splits(keys: Sequence[str], n_cal: int, repeats: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """`repeats` seeded random (calibration, evaluation) splits; no member is ever in both halves."""
    keys = list(dict.fromkeys(keys))
    if not 0 < n_cal < len(keys) - 1:
        raise NasddError(f"a calibration set of {n_cal} leaves too few of {len(keys)} members to evaluate")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        perm = [keys[i] for i in rng.permutation(len(keys))]
        out.append((sorted(perm[:n_cal]), sorted(perm[n_cal:])))
    return out


# -- calibration --------------------------------------------------------------------------------------------
def calibrate_columns(
    scores: pd.DataFrame, axes: pd.DataFrame, truth: pd.Series, members: Sequence[str], *, n_trials: int = 80,
    seed: int = 0,
) -> str:  # fmt: skip
    """The column of `scores` that an Optuna TPE study over the categorical `axes` (one row per column, one
    column per axis) finds to rank `members` best by Kendall tau against `truth`. Only `members` are read;
    an axis combination that names no column is pruned."""
    import optuna

    members = list(members)
    t = truth.loc[members].to_numpy(float)
    sc = scores.loc[members]
    lookup = {tuple(row): col for col, row in axes.astype(str).iterrows()}
    choices = {a: sorted(axes[a].astype(str).unique()) for a in axes.columns}

    def objective(trial: optuna.Trial) -> float:
        col = lookup.get(tuple(trial.suggest_categorical(a, c) for a, c in choices.items()))
        if col is None:
            raise optuna.TrialPruned()
        trial.set_user_attr("column", col)
        return stats.kendall_tau(t, sc[col].to_numpy())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials)
    return str(study.best_trial.user_attrs["column"])


def calibrate(grid: Grid, truth: pd.Series, members: Sequence[str], *, n_trials: int = 80, seed: int = 0) -> str:
    """The grid recipe (its key) chosen on `members` over (training configuration, BN re-estimation, score kind)."""
    axes = pd.DataFrame(
        {"config": [grid.config[k] for k in grid.scores.columns],
         "bn": [grid.recipes[k].bn_images > 0 for k in grid.scores.columns],
         "score": [grid.recipes[k].score for k in grid.scores.columns]},
        index=grid.scores.columns,
    )  # fmt: skip
    return calibrate_columns(grid.scores, axes, truth, members, n_trials=n_trials, seed=seed)


def pinned(
    recipe: ScoringRecipe, *, space: str, dataset_key: str, source: str, members: Sequence[str]
) -> ScoringRecipe:
    """`recipe` pinned to a space and dataset, naming what it was calibrated on."""
    return replace(recipe, space=space, dataset_key=dataset_key, calibrated_on=source, members=tuple(sorted(members)))


# -- the stacked ranker ---------------------------------------------------------------------------------------
FACTORS = ("depth", "width", "activation", "normalization", "pooling")


def _ranks(frame: pd.DataFrame) -> pd.DataFrame:
    """Each column's ranks within the scored set, scaled to [0, 1] (scale-free across datasets)."""
    return frame.rank(pct=True, na_option="bottom").fillna(0.0)


class StackRanker:
    """Ridge regression (or gradient boosting) on ranks: cheap score columns plus one-hot architecture
    factors (every column of the `factors` frame) -> the truth's rank (NAS-Bench-Suite-Zero's stacking of
    cheap signals, White et al. NeurIPS 2022). Learned state ends in `_`; it refuses to score a (dataset,
    member) it was fitted on."""

    def __init__(self, *, model: str = "ridge", alpha: float = 1.0, seed: int = 0) -> None:
        if model not in ("ridge", "gbr"):
            raise NasddError(f"unknown stack model {model!r}; valid models: ridge, gbr")
        self.model, self.alpha, self.seed = model, alpha, seed

    def _features(self, scores: pd.DataFrame, factors: pd.DataFrame) -> pd.DataFrame:
        """Ranks of the score columns and one-hot columns of every factor (each value as a category)."""
        f = pd.get_dummies(factors.astype(str), dtype=float)
        return pd.concat([_ranks(scores), f], axis=1)

    def fit(self, dataset_key: str, scores: pd.DataFrame, factors: pd.DataFrame, truth: pd.Series) -> StackRanker:
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.linear_model import Ridge

        x = self._features(scores, factors.loc[scores.index])
        self.columns_ = list(x.columns)
        est = Ridge(alpha=self.alpha) if self.model == "ridge" else GradientBoostingRegressor(
            n_estimators=100, max_depth=2, learning_rate=0.05, random_state=self.seed
        )  # fmt: skip
        self.estimator_ = est.fit(x.to_numpy(), truth.loc[scores.index].rank(pct=True).to_numpy())
        self.fitted_ = {(dataset_key, k) for k in scores.index}
        return self

    def predict(self, dataset_key: str, scores: pd.DataFrame, factors: pd.DataFrame) -> pd.Series:
        seen = [k for k in scores.index if (dataset_key, k) in self.fitted_]
        if seen:
            raise NasddError(f"the stacked ranker was fitted on {len(seen)} of these members (e.g. {seen[0]}); "
                             "score it only on members it has not seen")  # fmt: skip
        x = self._features(scores, factors.loc[scores.index]).reindex(columns=self.columns_, fill_value=0.0)
        return pd.Series(self.estimator_.predict(x.to_numpy()), index=scores.index)


# -- judging a choice on held-out members ------------------------------------------------------------------------
def metrics(truth: np.ndarray, score: np.ndarray) -> dict[str, float]:
    return {
        "tau": stats.kendall_tau(truth, score),
        "rho_top10": stats.top_spearman(truth, score, 10),
        "rho_top20": stats.top_spearman(truth, score, 20),
        "p@5": stats.precision_at_k(truth, score, 5),
        "regret@1": stats.regret_at_k(truth, score, 1),
    }


def paired_draws(truth: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` bootstrap draws of tau(a) - tau(b) over the same resampled architectures."""
    m = len(truth)
    out = np.empty(n)
    for i in range(n):
        idx = rng.integers(0, m, m)
        out[i] = stats.kendall_tau(truth[idx], a[idx]) - stats.kendall_tau(truth[idx], b[idx])
    return out


@dataclass(frozen=True)
class HeldOut:
    """What the held-out protocol compares: the target's grid, truth (mean accuracy), architecture factors,
    the baseline score (e.g. early stopping at the same budget) and extra cheap columns for the stack."""

    grid: Grid
    truth: pd.Series
    factors: pd.DataFrame
    baseline: pd.Series
    extra: pd.DataFrame
    uncalibrated: str  # the grid recipe key of today's scoring (early stopping, val_acc, no BN)


def split_rows(h: HeldOut, cal: list[str], ev: list[str], *, n_trials: int, seed: int,
               transfer: str | None = None) -> tuple[list[dict], dict[str, pd.Series]]:  # fmt: skip
    """Every option's metrics on the evaluation members of one split, each fitted/chosen on `cal` only,
    and the options' evaluation scores."""
    chosen = calibrate(h.grid, h.truth, cal, n_trials=n_trials, seed=seed)
    cfg = h.grid.config[chosen]
    cols = [k for k, c in h.grid.config.items() if c == cfg]
    scores_cal = pd.concat([h.grid.scores.loc[cal, cols], h.extra.loc[cal]], axis=1)
    scores_ev = pd.concat([h.grid.scores.loc[ev, cols], h.extra.loc[ev]], axis=1)
    options: dict[str, pd.Series] = {
        "baseline": h.baseline.loc[ev],
        "uncalibrated": h.grid.scores.loc[ev, h.uncalibrated],
        "fewshot": h.grid.scores.loc[ev, chosen],
    }
    if transfer is not None:
        options["transfer"] = h.grid.scores.loc[ev, transfer]
    for model in ("ridge", "gbr"):
        st = StackRanker(model=model, seed=seed).fit(h.grid.dataset_key, scores_cal, h.factors, h.truth)
        options[f"stack_{model}"] = st.predict(h.grid.dataset_key, scores_ev, h.factors)
    empty = pd.DataFrame(index=h.truth.index)
    fo = StackRanker(model="ridge", seed=seed).fit(h.grid.dataset_key, empty.loc[cal], h.factors, h.truth)
    options["factors_only"] = fo.predict(h.grid.dataset_key, empty.loc[ev], h.factors)
    t = h.truth.loc[ev].to_numpy(float)
    rows = []
    for name, s in options.items():
        row = {"option": name, "k": len(cal), "chosen": chosen if name == "fewshot" else "", **metrics(t, s.to_numpy())}
        rows.append(row)
    return rows, options
