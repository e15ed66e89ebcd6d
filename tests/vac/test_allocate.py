"""The knapsack decides the ranks: it must be optimal, respect the budget, and land on the ratio."""

import itertools
import random

import pytest

from scu import ScuError
from scu.vac.allocate import (
    Matrix, candidate_ranks, check_ratio, knapsack_ranks, linear_ratio, solve_knapsack, uniform_ranks,
)


def test_hand_case_picks_the_cheapest_combination_that_fits():
    # Two matrices, capacity 10. Options (cost, weight):
    #   A: (9, 2) (4, 5) (1, 8)      B: (7, 2) (3, 4) (0, 7)
    # Feasible combinations within weight 10 and their costs:
    #   A0+B0 16 (w4), A0+B1 12 (w6), A0+B2 9 (w9), A1+B0 11 (w7), A1+B1 7 (w9), A2+B0 8 (w10)
    # The optimum is A1+B1 (cost 7), not the one that spends the whole budget (A2+B0, cost 8).
    costs = [[9, 4, 1], [7, 3, 0]]
    weights = [[2, 5, 8], [2, 4, 7]]
    assert solve_knapsack(costs, weights, 10) == [1, 1]
    assert solve_knapsack(costs, weights, 16) == [2, 2]
    assert solve_knapsack(costs, weights, 4) == [0, 0]


def test_matches_brute_force_on_random_small_problems():
    rng = random.Random(0)
    for _ in range(40):
        groups = rng.randint(1, 4)
        costs = [[rng.uniform(0, 10) for _ in range(rng.randint(1, 4))] for _ in range(groups)]
        weights = [[rng.randint(0, 9) for _ in c] for c in costs]
        cap = rng.randint(sum(min(w) for w in weights), sum(max(w) for w in weights))
        best = min(
            (sum(costs[g][c] for g, c in enumerate(combo)), combo)
            for combo in itertools.product(*[range(len(c)) for c in costs])
            if sum(weights[g][c] for g, c in enumerate(combo)) <= cap
        )
        got = solve_knapsack(costs, weights, cap)
        assert sum(weights[g][c] for g, c in enumerate(got)) <= cap
        assert sum(costs[g][c] for g, c in enumerate(got)) == pytest.approx(best[0])


def test_infeasible_budget_is_a_user_error():
    with pytest.raises(ScuError):
        solve_knapsack([[1.0]], [[5]], 4)


SHAPES = [(64, 64)] * 4 + [(172, 64), (172, 64), (64, 172)]
MATRICES = [Matrix(f"layers.{i}.{j}", o, n) for i in range(2) for j, (o, n) in enumerate(SHAPES)]


@pytest.mark.parametrize("ratio", [1.1, 1.25, 1.8, 3.0])
def test_both_allocations_land_within_one_percent(ratio):
    budget = int(sum(m.dense_params for m in MATRICES) / ratio)
    rng = random.Random(1)
    cands = [candidate_ranks(m, 0.0) for m in MATRICES]
    # Decreasing, convex-ish costs with a random scale per matrix.
    costs = [[rng.uniform(0.1, 10) * (1 - r / m.break_even) ** 2 for r in c] for m, c in zip(MATRICES, cands)]
    for ranks in (knapsack_ranks(MATRICES, cands, costs, budget), uniform_ranks(MATRICES, budget)):
        achieved = linear_ratio(MATRICES, ranks)
        assert abs(achieved / ratio - 1) <= 0.01
        assert sum(m.params(ranks[m.name]) for m in MATRICES) <= budget


def test_knapsack_spends_rank_where_the_cost_is():
    budget = int(sum(m.dense_params for m in MATRICES) / 1.8)
    cands = [candidate_ranks(m, 0.0) for m in MATRICES]
    important = MATRICES[0].name
    costs = [[(100.0 if m.name == important else 1.0) * (1 - r / m.break_even) for r in c] for m, c in zip(MATRICES, cands)]
    ranks = knapsack_ranks(MATRICES, cands, costs, budget)
    uniform = uniform_ranks(MATRICES, budget)
    assert ranks[important] is None or ranks[important] > uniform[important]


def test_floor_limits_the_candidates():
    m = Matrix("x", 64, 64)
    assert min(candidate_ranks(m, 0.25)) == 16
    assert max(candidate_ranks(m, 0.25)) == m.break_even == 31


def test_check_ratio_refuses_more_than_one_percent_off():
    check_ratio(1.805, 1.8)
    with pytest.raises(ScuError):
        check_ratio(1.83, 1.8)
