"""The start-up criterion's limit-cycle flag, and cached start-up runs judged again from their traces."""

from __future__ import annotations

import math

import pytest


def test_limit_cycle_flag_reads_the_swing_about_the_trend_not_a_drift():
    from bench.harness.summary import limit_cycle

    target = 0.05
    # lambda drifting up by a factor 2 (log p2p 0.69) while S_hat sits on S* and crosses it: a drift, not a cycle
    drift = [{"s": target, "s_hat": target * (1.01 if i % 10 < 5 else 0.99), "lambda": 0.01 * math.exp(0.69 * i / 99)}
             for i in range(100)]
    flags = limit_cycle(drift + drift, target)  # the second half is what is read
    assert flags["cycle"] and not flags["cycle_detrended"]
    assert flags["p2p_detrended_2nd_half"] == pytest.approx(0.0, abs=1e-9)
    # the same drift with a 20-step oscillation of log-lambda +-0.3 on it: a cycle either way
    swing = [{**r, "lambda": r["lambda"] * math.exp(0.3 * math.sin(2 * math.pi * i / 20))} for i, r in enumerate(drift)]
    flags = limit_cycle(swing + swing, target)
    assert flags["cycle"] and flags["cycle_detrended"]
    assert flags["p2p_detrended_2nd_half"] > 0.55


def test_cached_runs_are_judged_again_from_their_trace(tmp_path):
    from bench.pi_startup import judge, rejudge

    target = 0.05
    s = [0.0] + [min(0.01 * i, target * (1.01 if i % 10 < 5 else 0.99)) for i in range(1, 100)]  # on S*, crossing it
    lam = [0.01 * math.exp(1.38 * i / 99) for i in range(100)]  # a factor 2 over the second half
    rows = [{"s": x, "s_hat": x, "lambda": y} for x, y in zip(s, lam)]
    old = judge(rows, target)
    cached = {"target_s": target, "trace": {"s": s, "s_hat": s, "lambda": lam, "lambda_balance": [None] * 100}, **old}
    again = rejudge(cached)
    assert again["tracking"] == old["tracking"] and again["meets"] == old["meets"]
    assert again["meets"]["all_detrended"] and not again["meets"]["all"]  # the drift is flagged only by the raw read
