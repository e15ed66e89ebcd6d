"""T-SCU controller on telemetry alone: budget, temperature, pause/resume, recovery, metrics, state."""

import math

import pytest

from scu.core.telemetry import StepTelemetry
from scu.core.thermal import (
    BOLTZMANN,
    ThermalConfig,
    ThermalController,
    bits_per_joule,
    landauer_efficiency,
    landauer_joules,
)

STEP_S = 0.1


def tel(power=None, temp=None, energy=None, data_bpt=3.0, param_bpt=0.0, wall_time=STEP_S, step=1) -> StepTelemetry:
    return StepTelemetry(step=step, data_bpt=data_bpt, param_bpt=param_bpt, tokens=512, lr=1e-3, wall_time=wall_time,
                         power_watts=power, temperature_celsius=temp, energy_joules=energy)  # fmt: skip


def run(c: ThermalController, power, temp, seconds: float, slept=None, reasons=None) -> list[float]:
    """Feed `seconds` of computing steps at constant readings; return the factor after each step
    (and collect the requested sleeps and the reasons given)."""
    out = []
    for _ in range(round(seconds / STEP_S)):
        action = c.step(tel(power, temp))
        out.append(c.factor)
        if slept is not None:
            slept.append(action.sleep_s)
        if reasons is not None:
            reasons.extend(action.reasons)
    return out


def test_over_budget_plateau_lowers_the_factor_then_it_recovers_smoothly():
    c = ThermalController(ThermalConfig(power_budget_watts=20.0, recovery_rate=0.05))
    assert run(c, 15.0, 50.0, 3) == [1.0] * 30  # under budget: untouched
    slept, reasons = [], []
    plateau = run(c, 40.0, 50.0, 5, slept, reasons)
    assert plateau[-1] < 1.0 and min(plateau) >= c.config.min_factor
    assert sum(slept) > 0  # the default actuator paces
    assert c.throttle_events == 1
    assert reasons == ["thermal: throttling to 0.50 (40.0 W over the 20 W budget)"]  # transitions only
    after = run(c, 10.0, 50.0, 30, reasons=reasons)
    assert reasons[1:] == ["thermal: back to full speed"]
    steps = [b - a for a, b in zip([plateau[-1]] + after, after)]
    assert all(0.0 <= d <= 0.05 + 1e-12 for d in steps)  # a ramp, never a jump
    assert after[-1] == 1.0


def test_pacing_brings_a_simulated_device_to_the_budget():
    """A device that draws 60 W computing and 5 W asleep: the duty cycle the factor sets
    must bring the measured average power to the 20 W budget."""
    c = ThermalController(ThermalConfig(power_budget_watts=20.0, control_frequency=2.0))
    busy, idle, sleep = 60.0, 5.0, 0.0
    powers = []
    for _ in range(600):
        power = (busy * STEP_S + idle * sleep) / (STEP_S + sleep)
        powers.append(power)
        sleep = c.step(tel(power, 50.0)).sleep_s
    tail = powers[-200:]
    assert sum(tail) / len(tail) == pytest.approx(20.0, rel=0.05)
    assert c.factor == pytest.approx((20.0 - idle) / (busy - idle), rel=0.1)


def test_temperature_above_max_cuts_in_proportion_to_the_overshoot():
    cut = {}
    for temp in (78.0, 84.0):
        c = ThermalController(ThermalConfig(max_temperature_celsius=75.0, pause_temperature_celsius=85.0, temperature_gain=0.5))
        run(c, None, temp, 1.0)  # one control period
        cut[temp] = c.factor
    assert cut[78.0] == pytest.approx(1 - 0.5 * 0.3) and cut[84.0] == pytest.approx(1 - 0.5 * 0.9)


def test_hard_limit_pauses_until_the_resume_threshold():
    c = ThermalController(ThermalConfig(max_temperature_celsius=75.0))  # pause 85, resume 70
    run(c, 10.0, 60.0, 1)
    action = c.step(tel(10.0, 86.0))
    assert c.paused and c.pause_events == 1 and c.factor == 0.5
    assert action.reasons == ["thermal: pause at 86.0 C (hard limit 85 C)"]
    assert action.pause_until_celsius == 70.0  # the loop waits (it never happens inside the controller)
    c.step(tel(10.0, 60.0))  # the next step comes after the loop waited the pause out
    assert not c.paused
    after = run(c, 10.0, 60.0, 20)
    assert after[-1] == 1.0 and c.pause_events == 1


def test_without_readings_it_never_acts():
    c = ThermalController(ThermalConfig(), tokens_per_epoch=10_000)
    for _ in range(50):
        a = c.step(tel())
        assert (a.sleep_s, a.lr_factor, a.stop, a.reasons, a.pause_until_celsius) == (0.0, 1.0, False, [], None)
    assert c.factor == 1.0 and not c.paused and c.throttle_events == 0
    assert a.report["bits_per_joule"] is None and a.report["landauer_efficiency"] is None


@pytest.mark.parametrize("actuator", ["sleep", "lr", "grad_accum"])
def test_the_factor_reaches_the_loop_through_the_chosen_actuator(actuator):
    c = ThermalController(ThermalConfig(actuator=actuator), base_grad_accum=8)
    c.factor = 0.25
    a = c._action(0.3, [], False)
    expected = {"sleep": (0.9, 1.0, None), "lr": (0.0, 0.25, None), "grad_accum": (0.0, 1.0, 2)}[actuator]
    assert (a.sleep_s, a.lr_factor, a.grad_accum) == pytest.approx(expected)


def test_grad_accum_actuator_needs_micro_batches():
    with pytest.raises(ValueError, match="gradient accumulation"):
        ThermalController(ThermalConfig(actuator="grad_accum"), base_grad_accum=1)


def test_landauer_and_bits_per_joule_formulas():
    assert landauer_joules(1.0, 26.85) == pytest.approx(BOLTZMANN * 300.0 * math.log(2))
    assert landauer_efficiency(1e6, 2.0, 26.85) == pytest.approx(1e6 * BOLTZMANN * 300.0 * math.log(2) / 2.0)
    assert bits_per_joule(10.0, 4.0) == 2.5
    assert landauer_efficiency(1e6, None, 30.0) is None and bits_per_joule(5.0, 0.0) is None


def test_bits_learned_is_the_smoothed_drop_in_total_description_length():
    n = 1000
    c = ThermalController(ThermalConfig(bits_ema_alpha=0.5), tokens_per_epoch=n)
    report = c.step(tel(power=10.0, temp=27.0, energy=2.0, data_bpt=4.0, param_bpt=0.0)).report
    assert report["bits_learned"] == 0.0  # the first step sets the baseline
    report = c.step(tel(power=10.0, temp=27.0, energy=2.0, data_bpt=3.0, param_bpt=0.2)).report  # total 3.2, EMA 3.6
    assert report["bits_learned"] == pytest.approx(0.4 * n)
    assert report["bits_per_joule"] == pytest.approx(0.4 * n / 2.0)
    assert report["landauer_efficiency"] == pytest.approx(landauer_joules(0.4 * n, 27.0) / 2.0)


def test_efficiency_target_stops_after_patience_periods():
    cfg = ThermalConfig(target_efficiency_bits_per_joule=100.0, efficiency_patience=3, bits_ema_alpha=1.0, control_frequency=1.0)
    c = ThermalController(cfg, tokens_per_epoch=1000)
    bpt, stops = 5.0, []
    for i in range(100):
        bpt -= 0.02 if i < 40 else 0.0001  # 20 bits/step, then 0.1 bits/step, at 0.1 J/step
        a = c.step(tel(power=1.0, temp=30.0, energy=0.1, data_bpt=bpt))
        stops.append(a.stop)
    first = stops.index(True)
    assert 40 + 3 * 10 - 10 <= first < 40 + 3 * 10 + 10  # three 1 s periods after the drop
    with pytest.raises(ValueError, match="tokens_per_epoch"):
        ThermalController(cfg)


def test_state_dict_roundtrip_continues_identically():
    a = ThermalController(ThermalConfig(), tokens_per_epoch=100)
    trace = [(40.0 if 20 < i < 60 else 12.0, 90.0 if i == 70 else 60.0) for i in range(120)]
    for p, t in trace[:65]:
        a.step(tel(p, t, data_bpt=3.0 - 0.01 * len(trace)))
    b = ThermalController(ThermalConfig(), tokens_per_epoch=100)
    b.load_state_dict(a.state_dict())
    for p, t in trace[65:]:
        ra, rb = a.step(tel(p, t)), b.step(tel(p, t))
        assert ra == rb and a.state_dict() == b.state_dict()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"power_budget_watts": 0}, "power_budget_watts"),
        ({"max_temperature_celsius": 75, "pause_temperature_celsius": 70}, "resume_temperature < max_temperature"),
        ({"control_frequency": 0}, "control_frequency"),
        ({"min_factor": 0}, "min_factor"),
        ({"target_efficiency_bits_per_joule": -1}, "target_efficiency"),
    ],
)
def test_config_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThermalConfig(**kwargs)


def test_defaults_match_the_issue():
    cfg = ThermalConfig()
    assert (cfg.power_budget_watts, cfg.max_temperature_celsius) == (20.0, 75.0)
    assert (cfg.pause_temperature_celsius, cfg.resume_temperature_celsius) == (85.0, 70.0)
    assert cfg.target_efficiency_bits_per_joule is None and cfg.actuator == "sleep"
