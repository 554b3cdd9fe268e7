"""The synchronous successive-halving protocol of `--strategy prescreen`, driven by injected scores (no training)."""

import pytest

from nasdd.errors import NasddError
from nasdd.search import halving
from nasdd.search.halving import Bracket, Job


def test_rungs_are_powers_of_eta_then_the_recipe_length():
    assert halving.ladder(12, 3) == (1, 3, 9, 12)
    assert halving.ladder(9, 3) == (1, 3, 9)
    assert halving.ladder(8, 2) == (1, 2, 4, 8)
    assert halving.ladder(1, 3) == (1,)


def test_a_bracket_charges_each_rung_only_the_epochs_since_the_previous_one():
    assert Bracket((9, 12), (11, 6)).cost == 11 * 9 + 6 * 3
    assert Bracket((1, 3, 9, 12), (27, 9, 3, 1)).cost == 27 + 9 * 2 + 3 * 6 + 1 * 3
    with pytest.raises(NasddError, match="not a bracket"):
        Bracket((3, 9), (2, 3))  # more candidates at a later rung


@pytest.mark.parametrize("epochs,eta", [(12, 3), (8, 2), (30, 3), (1, 3)])
def test_the_plan_spends_at_most_the_budget_and_leaves_less_than_one_entry_rung(epochs, eta):
    for candidates in (1, 4, 60):
        for budget in range(1, 40 * epochs):
            b = halving.plan(budget, epochs, eta=eta, candidates=candidates)
            left = budget - b.cost
            assert left >= 0, (budget, b)
            assert b.sizes[0] <= candidates
            assert left < b.rungs[0] or b.sizes[0] == candidates, (budget, candidates, b)  # else one more enters


def test_the_plan_enters_at_a_trusted_rung_and_fully_trains_the_top_k_when_that_examines_most():
    assert halving.plan(119, 12, candidates=60) == Bracket((9, 12), (11, 6))  # 10 truth trainings: 11 at 9 epochs
    assert halving.plan(120, 12, candidates=60).sizes[0] == 12
    assert halving.plan(24, 12, candidates=60) == Bracket((12,), (2,))  # full training of the top 2 (ties: later)
    assert halving.plan(36, 12, candidates=3) == Bracket((12,), (3,))
    # no trusted rung fits: one rung that still compares candidates
    assert halving.plan(6, 12, candidates=60) == Bracket((3,), (2,))
    assert halving.plan(3, 12, candidates=60) == Bracket((1,), (3,))


def test_a_budget_below_one_rung_is_one_clear_error():
    with pytest.raises(NasddError, match="less than one rung"):
        halving.plan(0, 12, candidates=10)


def test_synchronous_rungs_promote_the_best_and_the_winner_is_best_on_val_after_the_last():
    ranked = [f"m{i}" for i in range(6)]  # pre-screen order
    final = {"m0": 0.80, "m1": 0.85, "m2": 0.95, "m3": 0.90, "m4": 0.70, "m5": 0.99}
    b = Bracket((3, 9, 12), (6, 3, 2))
    calls: list[Job] = []

    def score(job: Job) -> float:  # a slow starter (m5) is low early: it is pruned at rung 3
        calls.append(job)
        return final[job.arch] - (0.3 if job.arch == "m5" and job.epochs == 3 else 0.0) - 0.01 * (12 - job.epochs)

    win, spent, results = halving.simulate(b, ranked, score)
    assert spent == b.cost == 6 * 3 + 3 * 6 + 2 * 3
    assert [j.epochs for j in calls] == [3] * 6 + [9] * 3 + [12] * 2  # every rung before the next
    assert {j.arch for j in calls if j.epochs == 9} == {"m2", "m3", "m1"}
    assert all(j.start == 3 for j in calls if j.epochs == 9) and all(j.start == 9 for j in calls if j.epochs == 12)
    assert win == "m2"


def test_next_jobs_resume_from_what_is_recorded():
    ranked = ["a", "b", "c"]
    b = Bracket((1, 3), (3, 1))
    assert halving.next_jobs(b, ranked, {}) == [Job("a", 0, 1), Job("b", 0, 1), Job("c", 0, 1)]
    partial = {("a", 1): 0.5, ("c", 1): 0.7}
    assert halving.next_jobs(b, ranked, partial) == [Job("b", 0, 1)]  # only the missing one
    done = {**partial, ("b", 1): 0.6}
    assert halving.next_jobs(b, ranked, done) == [Job("c", 1, 3)]
    assert halving.winner(b, ranked, done) is None
    assert halving.winner(b, ranked, {**done, ("c", 3): 0.8}) == "c"


def test_a_failed_candidate_is_last_and_ties_go_to_the_pre_screen_rank():
    ranked = ["a", "b", "c"]
    b = Bracket((2,), (3,))
    assert halving.winner(b, ranked, {("a", 2): float("nan"), ("b", 2): 0.6, ("c", 2): 0.6}) == "b"
