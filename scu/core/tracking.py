"""How well S tracked its target: the numbers the tests, `scu validate` and the benchmarks report.

All take the per-step series of a run (metrics.jsonl columns) as plain lists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Tracking:
    error: float  # |mean S - S*| / S* over the second half
    in_band: float  # fraction of second-half steps with S_hat within +-band of S*
    settling_step: int | None  # first step after which S_hat stays in the band; None if never
    overshoot: float  # (max S_hat after the first crossing - S*) / S*, 0 if no crossing
    log_lambda_p2p: float | None  # max - min of ln(lambda) after settling
    at_bound: float  # fraction of steps with lambda pinned at a bound

    def as_dict(self) -> dict:
        return asdict(self)


def tracking(
    s: list[float], s_hat: list[float], lam: list[float], at_bound: list[str | None], target: float, band: float = 0.10
) -> Tracking:
    n = len(s)
    if n == 0:
        raise ValueError("no steps to evaluate")
    half = n // 2
    second_s, second_hat = s[half:], s_hat[half:]
    error = abs(sum(second_s) / len(second_s) - target) / target
    inside = [abs(x - target) <= band * target for x in s_hat]
    in_band = sum(inside[half:]) / len(second_hat)
    settling = None
    for i in range(n - 1, -1, -1):
        if not inside[i]:
            settling = i + 2 if i + 1 < n else None  # steps are 1-based
            break
    else:
        settling = 1
    first_cross = next((i for i, x in enumerate(s_hat) if x >= target), None)
    overshoot = 0.0 if first_cross is None else max(0.0, (max(s_hat[first_cross:]) - target) / target)
    p2p = None
    if settling is not None:
        logs = [math.log(x) for x in lam[settling - 1 :] if x > 0]
        p2p = max(logs) - min(logs) if logs else None
    bound = sum(b is not None for b in at_bound) / n
    return Tracking(error, in_band, settling, overshoot, p2p, bound)


def tracking_from_rows(rows: list[dict], target: float, band: float = 0.10) -> Tracking:
    """`tracking` on metrics.jsonl rows (steps with a measured S)."""
    rows = [r for r in rows if r.get("s") is not None]
    return tracking(
        [r["s"] for r in rows], [r["s_hat"] for r in rows], [r["lambda"] for r in rows],
        [r.get("at_bound") for r in rows], target, band,
    )
