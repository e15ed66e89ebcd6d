"""bench.growth_readings rebuilds, from a run's trace alone, the growth readings the controller itself made."""

import math

import pytest

from bench.growth_readings import drift, noise_and_rate, readings, slope
from scu.core.pi import PIConfig, PIController


def test_readings_from_the_trace_equal_the_controllers_own():
    # growth_alpha 1: the controller's lambda_growth is the step's reading itself, unaveraged
    c = PIController(PIConfig(smoothing="data", law="balance", target_s=0.1, feedforward="growth", growth_alpha=1.0,
                              approach="horizon", kp=1.0, ki=0.0, lambda_min=1e-6, lambda_max=1e3))
    trace = {"lambda": [], "param_bpt": [], "data_bpt": [], "penalty_sensitivity": []}
    own = []
    for k in range(40):
        data, param, sens = 9.0 - 0.02 * k + 0.3 * math.sin(k), 0.0 if k == 0 else 0.05 * k + 0.02 * math.cos(3 * k), 0.1 + 0.01 * k
        lam = c.update(param / (data + param), parts=(data, param), balance=(0.3, 1.0 if param else 0.0, sens if param else 0.0))
        for key, value in zip(trace, (lam, param, data, sens if param else 0.0)):
            trace[key].append(value)
        own.append((k, c.lambda_growth))
    steps, _, got = readings(trace)
    expected = dict(own)
    assert len(steps) > 30
    assert got == pytest.approx([expected[k] for k in steps], rel=1e-9)


def test_slope_recovers_how_readings_lean_towards_the_lambda_applied():
    # readings that overstate lambda's effect 2-fold lean halfway towards lam_avg: slope 1 - 1/2
    steps = list(range(60))
    lam_avg = [0.5 + 0.1 * math.sin(1.3 * k) for k in steps]
    reading = [a + (0.6 + 0.001 * k - a) / 2.0 for k, a in zip(steps, lam_avg)]
    assert slope(steps, lam_avg, reading, 0)["slope"] == pytest.approx(0.5, abs=1e-9)


def test_drift_reads_lag_steps_of_a_steady_log_slope():
    growth = [None] * 5 + [0.5 * math.exp(0.01 * k) for k in range(60)]  # no estimate for the first steps
    d = drift(growth, window=10, lag=9.0, skip=5)
    assert d["median"] == pytest.approx(0.09, rel=1e-6) and d["std"] == pytest.approx(0.0, abs=1e-9)


def test_noise_and_rate_reads_a_known_drift_and_noise():
    # log(reading) = 0.01 * k +- 0.05, alternating: drift 0.01 a step, noise 0.05 about the line
    steps = list(range(100))
    reading = [math.exp(0.01 * k + (0.05 if k % 2 else -0.05)) for k in steps]
    r = noise_and_rate(steps, reading, first=10)
    assert r["drift"] == pytest.approx(0.01, rel=0.1) and r["noise"] == pytest.approx(0.05, rel=0.1)
    assert r["rate"] == pytest.approx((4 * r["drift"] ** 2 / r["noise"] ** 2) ** (1 / 3), rel=1e-12)
    assert r["readings"] == 90
