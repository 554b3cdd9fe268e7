"""The matched-cost protocol's comparisons (nasdd.validate.matched), on a hand-made budget."""

import numpy as np
import pandas as pd
import pytest

from nasdd.validate import matched

KEYS = [f"a{i}" for i in range(12)]
TRUTH = pd.Series(np.linspace(0.5, 0.9, 12), index=KEYS)


def budget() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(
        {
            "good": TRUTH.to_numpy() + rng.normal(0, 0.01, 12),
            "bad": rng.normal(0, 1, 12),
            "mine": TRUTH.to_numpy()[::-1],
            "peer": TRUTH.to_numpy() + rng.normal(0, 0.05, 12),
        },
        index=KEYS,
    )
    summary = pd.DataFrame(
        {
            "budget": "1/100",
            "name": scores.columns,
            "kind": ["proxy", "proxy", "proxy", "peer:subset"],
            "tau": [0.95, 0.1, -1.0, 0.7],
        }
    )
    return summary, scores


def test_paired_against_the_best_peer_and_between_proxies():
    summary, scores = budget()
    every = matched.paired(summary, scores, TRUTH, 200)
    assert len(every) == 3 + 3  # each proxy against the peer, then each pair of proxies once
    assert set(every[every.b == "peer"].a) == {"good", "bad", "mine"}
    only_peer = matched.paired(summary, scores, TRUTH, 200, between=False)
    assert list(only_peer.b) == ["peer"] * 3
    mine = matched.paired(summary, scores, TRUTH, 200, among=["mine"])
    assert set(mine.a) == {"mine"} and set(mine.b) == {"peer", "good", "bad"}
    vs_good = mine[mine.b == "good"].iloc[0]
    assert vs_good.dtau == pytest.approx(-1.0 - matched.stats.kendall_tau(TRUTH, scores.good))
    assert vs_good.dtau_high < 0  # reversed order loses to a near-perfect one, paired CI below 0


def test_budget_names_and_order():
    assert matched.budget_name(0.01) == "1/100" and matched.budget_name(1 / 30) == "1/30"
    df = pd.DataFrame({"budget": ["1/30", "1/1000", "1/100", "1/1000"], "x": [1, 2, 3, 4]})
    assert matched.by_budget(df).x.tolist() == [2, 4, 3, 1]
    rows = pd.DataFrame(
        [{"budget": "1/100", "name": "p", "kind": "proxy", "distill_sample_grads": 1e6, "grads_per_candidate": 100}]
    )
    am = matched.amortisation(rows, per_truth=10_000).iloc[0]
    assert am.per_candidate_at_100 == 100 + 1e4 and am.break_even_candidates == 102  # floor(1e6 / 9,900) + 1


def test_a_budgets_scores_file_reads_back_under_the_rows_names(tmp_path):
    _, scores = budget()
    assert matched.read_scores(tmp_path, "1/100") is None  # nothing measured at that budget
    path = matched.scores_file(tmp_path, "1/100")
    assert path.name == "scores_100.csv"
    scores.rename_axis("arch_key").add_suffix("@1/100").to_csv(path)
    back = matched.read_scores(tmp_path, "1/100")
    assert list(back.columns) == list(scores.columns) and back.to_numpy() == pytest.approx(scores.to_numpy())
