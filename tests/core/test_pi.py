import math

import pytest

from scu.core.pi import PIConfig, PIController


def test_s_above_target_raises_lambda_and_below_lowers_it():
    up = PIController(PIConfig(target_s=0.05, lambda_init=1.0))
    down = PIController(PIConfig(target_s=0.05, lambda_init=1.0))
    assert up.update(0.10) > 1.0
    assert down.update(0.02) < 1.0


def test_fixed_lambda_when_bounds_equal():
    c = PIController(PIConfig(lambda_min=0.3, lambda_max=0.3, lambda_init=1.0))
    assert [c.update(s) for s in (0.0, 0.5, 0.9)] == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("s,bound", [(0.9, "max"), (1e-6, "min")])
def test_anti_windup_at_both_bounds(s, bound):
    cfg = PIConfig(target_s=0.05, lambda_min=1e-3, lambda_max=10.0, ema_alpha=1.0)
    c = PIController(cfg)
    for _ in range(200):
        c.update(s)
    assert c.at_bound == bound
    frozen = c.integral
    # While pinned and pushed further in, the integral must not grow.
    for _ in range(50):
        c.update(s)
    assert c.integral == frozen
    # Once S crosses the target, lambda leaves the bound at once (no wound-up integral to unwind).
    c.update(0.05 * (0.9 if bound == "max" else 1.1))
    assert c.at_bound is None


def test_state_dict_roundtrip_continues_identically():
    a = PIController(PIConfig())
    seq = [0.2 * math.exp(-i / 30) + 0.01 for i in range(100)]
    for s in seq[:50]:
        a.update(s)
    b = PIController(PIConfig())
    b.load_state_dict(a.state_dict())
    assert [a.update(s) for s in seq[50:]] == [b.update(s) for s in seq[50:]]


def test_guide_law_reproduces_reference_update():
    cfg = PIConfig(law="guide", kp=0.8, ki=0.15, deadband=0.003, lambda_min=1e-4, lambda_max=2.0, ema_alpha=1.0)
    c = PIController(cfg)
    lam, integral = 1.0, 0.0
    for s in (0.10, 0.08, 0.031, 0.02, 0.5):
        e = s - 0.05
        if abs(e) > 0.003:
            integral = min(max(0.995 * integral + 0.15 * e, -0.2), 0.2)
            lam = min(max(lam * math.exp(0.8 * e + integral), 1e-4), 2.0)
        assert c.update(s) == pytest.approx(lam, rel=1e-12)


def test_nan_s_is_refused():
    with pytest.raises(ValueError):
        PIController(PIConfig()).update(float("nan"))
