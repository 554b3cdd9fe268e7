import itertools
import math

import numpy as np
import pytest

from nasdd.validate import stats


def test_kendall_and_spearman_with_ties_match_hand_values():
    truth, score = [1, 2, 3, 4], [1, 2, 2, 4]
    # 5 concordant pairs, 0 discordant, one pair tied in score only: 5 / sqrt(6 * 5)
    assert stats.kendall_tau(truth, score) == pytest.approx(5 / math.sqrt(30))
    # ranks (1, 2.5, 2.5, 4): covariance 4.5, variances 5 and 4.5
    assert stats.spearman_rho(truth, score) == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    assert stats.kendall_tau(truth, truth[::-1]) == pytest.approx(-1)


def test_weighted_tau_is_top_heavy():
    truth = np.arange(10.0)
    top_swap, bottom_swap = truth.copy(), truth.copy()
    top_swap[[8, 9]] = top_swap[[9, 8]]
    bottom_swap[[0, 1]] = bottom_swap[[1, 0]]
    assert stats.weighted_tau(truth, truth) == pytest.approx(1)
    assert stats.weighted_tau(truth, top_swap) < stats.weighted_tau(truth, bottom_swap) < 1
    # plain tau cannot tell the two swaps apart
    assert stats.kendall_tau(truth, top_swap) == pytest.approx(stats.kendall_tau(truth, bottom_swap))


def test_precision_at_k_breaks_ties_in_expectation():
    truth = [6, 5, 4, 3, 2, 1]
    assert stats.precision_at_k(truth, [6, 5, 4, 3, 2, 1], 2) == 1
    assert stats.precision_at_k(truth, [1, 2, 3, 4, 5, 6], 2) == 0
    # item 0 is picked; items 1 and 2 tie for the second place (1/2 each); only item 1 is truly top-2
    assert stats.precision_at_k(truth, [6, 5, 5, 0, 0, 0], 2) == pytest.approx(0.75)
    assert stats.resolve_k("10%", 24) == 3 and stats.resolve_k(5, 24) == 5
    assert math.isnan(stats.precision_at_k(truth, truth, 6))  # k >= n says nothing


def test_regret_with_tied_picks():
    truth = np.array([0.9, 0.5, 0.7, 0.95])
    score = np.array([3, 2, 2, 2])
    assert stats.regret_at_k(truth, score, 1) == pytest.approx(0.05)
    # top-2 = item 0 plus one of the three tied: E[max] = (0.9 + 0.9 + 0.95) / 3
    assert stats.regret_at_k(truth, score, 2) == pytest.approx(0.95 - 2.75 / 3)
    # top-3 = item 0 plus two of three: pairs give max 0.9, 0.95, 0.95
    assert stats.regret_at_k(truth, score, 3) == pytest.approx(0.95 - 2.8 / 3)
    # a tied best pick: the expected truth of the tie
    assert stats.regret_at_k(truth, [1, 1, 0, 0], 1) == pytest.approx(0.95 - 0.7)


def test_constant_and_missing_scores():
    truth = np.arange(6.0)
    assert stats.kendall_tau(truth, np.ones(6)) == 0 and stats.spearman_rho(truth, np.ones(6)) == 0
    assert stats.precision_at_k(truth, np.ones(6), 3) == pytest.approx(0.5)  # chance
    # NaN ranks last: a perfect ranking with the worst one missing stays perfect
    assert stats.kendall_tau(truth, [np.nan, 1, 2, 3, 4, 5]) == pytest.approx(1)
    table = stats.rank_statistics(truth, np.ones(6), n_resamples=50)
    assert table["tau"] == 0 and table["tau_low"] == 0 and table["tau_high"] == 0


def test_bootstrap_near_truth_and_shuffled():
    rng = np.random.default_rng(0)
    truth = rng.random(40)
    near = stats.rank_statistics(truth, truth + 1e-6 * rng.standard_normal(40), n_resamples=300)
    assert near["tau"] > 0.99 and near["tau_low"] > 0.95 and near["p@5"] == 1
    shuffled = stats.rank_statistics(truth, rng.permutation(truth), n_resamples=300)
    assert shuffled["tau_low"] < 0 < shuffled["tau_high"]
    assert shuffled["rho_low"] < 0 < shuffled["rho_high"]
    assert near["tau_low"] <= near["tau"] <= near["tau_high"]


def test_noise_ceiling_is_mean_over_seed_pairs():
    rng = np.random.default_rng(1)
    base = rng.random(20)
    seeds = np.stack([base + 0.1 * rng.standard_normal(20) for _ in range(3)], axis=1)
    ceiling = stats.noise_ceiling(seeds, n_resamples=100)
    pairs = itertools.permutations(range(3), 2)
    assert ceiling["tau"] == pytest.approx(np.mean([stats.kendall_tau(seeds[:, j], seeds[:, i]) for i, j in pairs]))
    assert ceiling["tau_low"] <= ceiling["tau"] <= ceiling["tau_high"]
    identical = stats.noise_ceiling(np.stack([base, base], axis=1), n_resamples=50)
    assert identical["tau"] == 1 and identical["regret@1"] == 0
    with pytest.raises(ValueError):
        stats.noise_ceiling(base[:, None])


def test_paired_delta_tau_is_hand_computable_and_zero_for_identical_rankings():
    truth = np.array([1.0, 2, 3, 4, 5, 6])
    a = truth.copy()
    b = np.array([2.0, 1, 3, 4, 5, 6])  # one discordant pair of 15: tau = 13/15
    d = stats.paired_delta_tau(truth, a, b, n_resamples=200, seed=0)
    assert d["dtau"] == pytest.approx(1 - 13 / 15)
    assert d["dtau_low"] <= d["dtau"] <= d["dtau_high"]
    same = stats.paired_delta_tau(truth, b, b.copy(), n_resamples=200, seed=0)
    assert same["dtau"] == 0 and same["dtau_low"] <= 0 <= same["dtau_high"]


def test_top_spearman_orders_only_the_truths_best():
    from nasdd.validate.stats import top_spearman, top_spearman_table

    truth = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    score = np.array([3.0, 2.0, 1.0, 10.0, 11.0, 12.0])  # the top 3 in order, the rest reversed and above them
    assert top_spearman(truth, score, 3) == pytest.approx(1.0)
    assert top_spearman(truth, score, 5) < 0
    assert top_spearman(truth, -score, 3) == pytest.approx(-1.0)
    t = top_spearman_table(truth, score, [3, 6], n_resamples=50)
    assert t["rho_top3"] == pytest.approx(1.0) and t["rho_top6"] < 0 and "rho_top6_low" in t
