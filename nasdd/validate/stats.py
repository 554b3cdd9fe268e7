"""Rank statistics of a proxy's scores against ground truth, with paired bootstrap confidence intervals.

Convention: higher is better for both ground truth and scores. A missing (NaN) score ranks below
every finite one (a candidate the proxy could not train looks worst to it). A constant score orders
nothing: its correlations are reported as 0 (scipy gives NaN). Ties at a top-k boundary are broken
uniformly at random *in expectation*, so precision@k and regret are exact expected values.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats
from scipy.special import comb

DEFAULT_KS: tuple[int | str, ...] = (5, 10, "10%")


def _clean(score: np.ndarray) -> np.ndarray:
    """NaN/inf -> below the smallest finite value (all-missing becomes constant)."""
    score = np.asarray(score, dtype=float)
    ok = np.isfinite(score)
    if ok.all():
        return score
    low = score[ok].min() - 1.0 if ok.any() else 0.0
    return np.where(ok, score, low)


def _constant(*arrays: np.ndarray) -> bool:
    return any(np.ptp(a) == 0 for a in arrays)


def kendall_tau(truth: np.ndarray, score: np.ndarray) -> float:
    """Kendall's tau-b (ties corrected)."""
    truth, score = np.asarray(truth, float), _clean(score)
    if len(truth) < 2:
        return math.nan
    return 0.0 if _constant(truth, score) else float(scipy.stats.kendalltau(truth, score).statistic)


def spearman_rho(truth: np.ndarray, score: np.ndarray) -> float:
    truth, score = np.asarray(truth, float), _clean(score)
    if len(truth) < 2:
        return math.nan
    return 0.0 if _constant(truth, score) else float(scipy.stats.spearmanr(truth, score).statistic)


def weighted_tau(truth: np.ndarray, score: np.ndarray) -> float:
    """scipy's weighted Kendall tau with its hyperbolic weigher: swaps near the top cost most."""
    truth, score = np.asarray(truth, float), _clean(score)
    if len(truth) < 2:
        return math.nan
    return 0.0 if _constant(truth, score) else float(scipy.stats.weightedtau(truth, score).statistic)


def resolve_k(k: int | str, n: int) -> int:
    """`5` -> 5; `"10%"` -> ceil(10% of n), at least 1."""
    if isinstance(k, str) and k.endswith("%"):
        return max(1, math.ceil(float(k[:-1]) / 100 * n))
    return int(k)


def _inclusion(v: np.ndarray, k: int) -> np.ndarray:
    """Probability that each item is among the top k when ties are broken uniformly at random."""
    thr = np.sort(v)[::-1][k - 1]
    above, tied = v > thr, v == thr
    return above + tied * ((k - above.sum()) / tied.sum())


def precision_at_k(truth: np.ndarray, score: np.ndarray, k: int | str) -> float:
    """Expected fraction of the score's top k that are in the true top k (NaN when k >= n)."""
    truth, score = np.asarray(truth, float), _clean(score)
    kk = resolve_k(k, len(truth))
    if kk >= len(truth):
        return math.nan
    return float((_inclusion(score, kk) * _inclusion(truth, kk)).sum() / kk)


def _expected_best(truth: np.ndarray, score: np.ndarray, k: int) -> float:
    """Expected best truth among the score's top k (random tie-breaking at the boundary)."""
    thr = np.sort(score)[::-1][k - 1]
    above, tied = score > thr, score == thr
    m, g = k - int(above.sum()), int(tied.sum())
    best_above = truth[above].max() if above.any() else -math.inf
    v = np.sort(truth[tied])
    p = comb(np.arange(g), m - 1) / comb(g, m)  # P(max of m drawn from the g tied is the j-th smallest)
    return float((p * np.maximum(best_above, v)).sum())


def regret_at_k(truth: np.ndarray, score: np.ndarray, k: int | str) -> float:
    """True best minus the best truth among the score's top k (k=1: the score's pick). Lower is better."""
    truth, score = np.asarray(truth, float), _clean(score)
    kk = resolve_k(k, len(truth))
    if kk > len(truth) or len(truth) == 0:
        return math.nan
    return float(truth.max() - _expected_best(truth, score, kk))


def statistic_names(ks: Sequence[int | str] = DEFAULT_KS) -> list[str]:
    return ["tau", "rho", "wtau", *[f"p@{k}" for k in ks], "regret@1", *[f"regret@{k}" for k in ks]]


def all_statistics(truth: np.ndarray, score: np.ndarray, ks: Sequence[int | str] = DEFAULT_KS) -> np.ndarray:
    """Every statistic of `statistic_names(ks)`, in that order."""
    return np.array(
        [
            kendall_tau(truth, score),
            spearman_rho(truth, score),
            weighted_tau(truth, score),
            *[precision_at_k(truth, score, k) for k in ks],
            regret_at_k(truth, score, 1),
            *[regret_at_k(truth, score, k) for k in ks],
        ]
    )


def bootstrap_table(
    statistic: Callable[..., np.ndarray],
    data: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Point estimates and percentile CIs of a vector `statistic`, resampling architectures (paired).

    Returns {name, name_low, name_high} for every statistic; resamples where a statistic is
    undefined are skipped; a CI needs at least 3 architectures.
    """
    data = [np.asarray(d, float) for d in data]
    point = np.asarray(statistic(*data), float)
    out: dict[str, float] = {}
    lows = highs = np.full(len(names), math.nan)
    if len(data[0]) >= 3 and n_resamples > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = scipy.stats.bootstrap(
                data,
                statistic,
                paired=True,
                vectorized=False,
                n_resamples=n_resamples,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
            dist = np.atleast_2d(res.bootstrap_distribution)
            alpha = (1 - level) / 2 * 100
            lows, highs = np.nanpercentile(dist, [alpha, 100 - alpha], axis=-1)
    for i, name in enumerate(names):  # rounded: regrets of 1e-16 are float noise, not a result
        out[name], out[f"{name}_low"], out[f"{name}_high"] = (round(float(v[i]), 12) for v in (point, lows, highs))
    return out


def rank_statistics(
    truth: np.ndarray,
    score: np.ndarray,
    *,
    ks: Sequence[int | str] = DEFAULT_KS,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """All statistics of `score` against `truth` with bootstrap CIs over architectures."""
    return bootstrap_table(
        lambda t, s: all_statistics(t, s, ks),
        [truth, score],
        statistic_names(ks),
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )


def noise_ceiling(
    seeds: np.ndarray,
    *,
    ks: Sequence[int | str] = DEFAULT_KS,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Agreement of ground truth with itself: every statistic between two truth seeds, averaged over
    ordered seed pairs (seed i's accuracies as the score, seed j's as truth), with bootstrap CIs.

    `seeds` is [n_archs, n_seeds]; needs at least two seeds.
    """
    seeds = np.asarray(seeds, float)
    if seeds.ndim != 2 or seeds.shape[1] < 2:
        raise ValueError("the noise ceiling needs ground truth from at least two seeds")
    pairs = list(itertools.permutations(range(seeds.shape[1]), 2))

    def statistic(*cols: np.ndarray) -> np.ndarray:
        return np.mean([all_statistics(cols[j], cols[i], ks) for i, j in pairs], axis=0)

    return bootstrap_table(
        statistic,
        list(seeds.T),
        statistic_names(ks),
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )


def paired_delta_tau(
    truth: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Kendall tau of `a` minus that of `b` against `truth`, with a paired bootstrap CI: every resample
    draws the same architectures for both, so the shared noise of the pool cancels.

    Returns {"dtau", "dtau_low", "dtau_high"}.
    """
    return bootstrap_table(
        lambda t, x, y: np.array([kendall_tau(t, x) - kendall_tau(t, y)]),
        [truth, a, b],
        ["dtau"],
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )


def top_spearman(truth: np.ndarray, score: np.ndarray, k: int) -> float:
    """Spearman rho of `score` against `truth` over the truth's k best architectures only (how well a
    proxy orders the candidates a search is after). NaN unless 3 <= k < the number of architectures."""
    truth, score = np.asarray(truth, float), _clean(score)
    if not 3 <= k < len(truth):
        return math.nan
    top = np.argsort(-truth, kind="stable")[:k]
    return spearman_rho(truth[top], score[top])


def top_spearman_table(
    truth: np.ndarray, score: np.ndarray, ks: Sequence[int], *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """{rho_top{k}, _low, _high} for every k: the truth's top-k members fixed, CIs by resampling them."""
    out: dict[str, float] = {}
    for k in ks:
        top = np.argsort(-np.asarray(truth, float), kind="stable")[: min(k, len(truth))]
        out.update(
            bootstrap_table(
                lambda t, s: np.array([spearman_rho(t, s)]),
                [np.asarray(truth, float)[top], _clean(score)[top]],
                [f"rho_top{k}"],
                n_resamples=n_resamples,
                seed=seed,
            )
        )
    return out
