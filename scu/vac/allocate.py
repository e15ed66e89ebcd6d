"""Choose a rank for every linear layer under a total parameter budget.

`solve_knapsack` is an exact multiple-choice knapsack (one option per matrix, minimum total
predicted loss, total parameters within the budget) by dynamic programming over integer weights.
`knapsack_ranks` turns per-matrix candidate ranks and their predicted costs into that problem,
with parameter counts in budget units fine enough that rounding moves the ratio by well under 1%.
`uniform_ranks` gives every matrix the same parameter fraction (the usual SVD-baseline setup),
trimmed one rank at a time until the budget holds.
Pure numpy: this is the part of VAC that decides, so it is tested on hand-checkable cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scu import ScuError

RATIO_TOLERANCE = 0.01
UNITS_PER_MATRIX = 400  # budget resolution: rounding slack <= n_matrices / units = 0.25% of the budget


@dataclass(frozen=True)
class Matrix:
    """One linear layer as the allocator sees it."""

    name: str
    out_features: int
    in_features: int

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    def params(self, rank: int | None) -> int:
        """Parameters at `rank`; None means the layer stays dense."""
        return self.dense_params if rank is None else rank * (self.out_features + self.in_features)

    @property
    def break_even(self) -> int:
        """Largest rank whose factors have fewer parameters than the dense matrix."""
        return max(1, (self.dense_params - 1) // (self.out_features + self.in_features))


def solve_knapsack(costs: Sequence[Sequence[float]], weights: Sequence[Sequence[int]], capacity: int) -> list[int]:
    """Index of the chosen option per group minimizing total cost with total weight <= capacity.

    Exact: best[u] is the least cost of the groups so far with total weight exactly u. Among
    equal-cost optima the heaviest is returned (it uses the budget, so the ratio lands on target).
    """
    if capacity < 0:
        raise ScuError("the parameter budget is negative; use a ratio above 1")
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    choices = np.zeros((len(costs), capacity + 1), dtype=np.int32)
    for g, (cost, weight) in enumerate(zip(costs, weights)):
        new = np.full(capacity + 1, np.inf)
        for c, (cc, w) in enumerate(zip(cost, weight)):
            if w > capacity:
                continue
            cand = np.full(capacity + 1, np.inf)
            cand[w:] = best[: capacity + 1 - w] + cc
            better = cand < new
            new[better] = cand[better]
            choices[g, better] = c
        best = new
    if not np.isfinite(best).any():
        raise ScuError("no rank choice fits the parameter budget; lower --ratio or the rank floors")
    u = int(np.flatnonzero(best == best[np.isfinite(best)].min()).max())
    picked = []
    for g in range(len(costs) - 1, -1, -1):
        c = int(choices[g, u])
        picked.append(c)
        u -= int(weights[g][c])
    return picked[::-1]


def candidate_ranks(m: Matrix, floor: float, count: int = 64) -> list[int]:
    """Up to `count` ranks from the floor (a fraction of full rank) to the break-even rank."""
    lo = max(1, math.ceil(floor * min(m.out_features, m.in_features)))
    hi = m.break_even
    if lo > hi:
        return [hi]
    step = max(1, math.ceil((hi - lo) / max(count - 1, 1)))
    ranks = list(range(hi, lo - 1, -step))
    return sorted(set(ranks) | {lo})


def knapsack_ranks(
    matrices: Sequence[Matrix], candidates: Sequence[Sequence[int]], costs: Sequence[Sequence[float]], budget: int
) -> dict[str, int | None]:
    """Ranks (None = keep dense at zero predicted cost) minimizing total cost within `budget` parameters."""
    unit = budget / (UNITS_PER_MATRIX * len(matrices))
    opt_costs, opt_weights = [], []
    for m, ranks, cost in zip(matrices, candidates, costs):
        opt_costs.append([*cost, 0.0])
        opt_weights.append([math.ceil(m.params(r) / unit) for r in ranks] + [math.ceil(m.dense_params / unit)])
    picked = solve_knapsack(opt_costs, opt_weights, int(budget // unit))
    return {m.name: (ranks[c] if c < len(ranks) else None) for m, ranks, c in zip(matrices, candidates, picked)}


def uniform_ranks(matrices: Sequence[Matrix], budget: int) -> dict[str, int | None]:
    """Every matrix at the same parameter fraction, then trimmed (largest relative rank first) to the budget."""
    fraction = budget / sum(m.dense_params for m in matrices)
    ranks = {m.name: max(1, min(m.break_even, round(fraction * m.dense_params / (m.out_features + m.in_features)))) for m in matrices}
    by_name = {m.name: m for m in matrices}
    total = sum(by_name[n].params(r) for n, r in ranks.items())
    while total > budget:
        name = max((n for n in ranks if ranks[n] > 1), key=lambda n: ranks[n] / by_name[n].break_even, default=None)
        if name is None:
            break
        ranks[name] -= 1
        total -= by_name[name].out_features + by_name[name].in_features
    return ranks


def linear_ratio(matrices: Sequence[Matrix], ranks: dict[str, int | None]) -> float:
    """Dense over compressed parameter count of the linear layers."""
    return sum(m.dense_params for m in matrices) / sum(m.params(ranks[m.name]) for m in matrices)


def check_ratio(achieved: float, target: float) -> None:
    if abs(achieved / target - 1) > RATIO_TOLERANCE:
        raise ScuError(
            f"achieved compression ratio {achieved:.4f} is more than 1% off the requested {target}; "
            "the matrices are too coarse for this ratio: pick a ratio nearer 1 or lower the rank floors"
        )
