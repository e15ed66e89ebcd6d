"""T-SCU: keep training inside a power budget and a temperature limit, and account bits per joule.

The controller sees only `StepTelemetry` (power, temperature and energy of each optimizer
step, measured by `scu.energy`), so it runs the same on real sensors, a replayed trace, or
none at all. It keeps one *control factor* f in (0, 1] that the loop applies as

* ``sleep``: pacing; after a step that computed for t seconds it sleeps t(1 - f)/f, so the
  duty cycle is f and the average power is about f * P_busy + (1 - f) * P_idle;
* ``lr``: the learning rate is multiplied by f (smaller updates; does not lower power);
* ``grad_accum``: round(f * base) micro-batches per optimizer step (less work and energy per
  step; the power while computing is unchanged).

Only ``sleep`` lowers the power draw, so it is the default.

Control law, once per control period (1 / control_frequency seconds of training):

* average power P over the period above the budget B: f <- f * B / P. Under pacing with no
  idle power this lands on the budget in one update; with idle power it converges to it.
* hottest reading T above max_temperature: f <- f * (1 - gain * x), x the overshoot as a
  fraction of the band between max_temperature and the hard limit (capped at 1).
* both fine: f rises by at most recovery_rate per update, and never above f * B / P, the
  factor predicted to reach the budget, so recovery is a ramp that does not overshoot.

Every step, whatever the period: a reading at or above the hard limit asks the loop to pause
training until a reading at or below the resume threshold (`Action.pause_until_celsius`; the
loop waits, the controller never blocks), and training resumes at half the factor it had.
Missing readings (None) never throttle and never pause: without a sensor the controller does
nothing and the run reports "unavailable".

Bits learned are the decrease of the total description length of the training set,
(DataBPT + ParamBPT) * tokens_per_epoch, smoothed by an EMA because one step's loss is a
minibatch estimate. The optional efficiency target stops the run once bits per joule over a
control period stays below it for `efficiency_patience` periods: energy-aware early stopping.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scu.core.telemetry import Action, StepTelemetry

BOLTZMANN = 1.380649e-23  # J/K, exact (SI 2019)
ZERO_CELSIUS = 273.15
LN2 = math.log(2.0)


def landauer_joules(bits: float, temperature_celsius: float) -> float:
    """Least energy to erase `bits` bits at this temperature: k_B * T * ln 2 per bit."""
    return BOLTZMANN * (temperature_celsius + ZERO_CELSIUS) * LN2 * bits


def landauer_efficiency(bits: float | None, energy_joules: float | None, temperature_celsius: float | None) -> float | None:
    """k_B T ln2 * bits / energy; None when any input is missing or no energy was measured."""
    if bits is None or energy_joules is None or temperature_celsius is None or energy_joules <= 0:
        return None
    return landauer_joules(bits, temperature_celsius) / energy_joules


def bits_per_joule(bits: float | None, energy_joules: float | None) -> float | None:
    if bits is None or energy_joules is None or energy_joules <= 0:
        return None
    return bits / energy_joules


@dataclass
class ThermalConfig:
    power_budget_watts: float = 20.0
    max_temperature_celsius: float = 75.0
    pause_temperature_celsius: float | None = None  # hard limit; None: max_temperature + 10
    resume_temperature_celsius: float | None = None  # None: max_temperature - 5
    target_efficiency_bits_per_joule: float | None = None
    control_frequency: float = 1.0  # control updates per second of training (Hz)
    actuator: Literal["sleep", "lr", "grad_accum"] = "sleep"
    min_factor: float = 0.05
    recovery_rate: float = 0.05  # largest rise of the factor per control update
    temperature_gain: float = 0.5  # relative cut per update at a full-band overshoot
    efficiency_patience: int = 5  # control periods below the efficiency target before stopping
    bits_ema_alpha: float = 0.1  # smoothing of the description length per token

    def __post_init__(self) -> None:
        if self.pause_temperature_celsius is None:
            self.pause_temperature_celsius = self.max_temperature_celsius + 10.0
        if self.resume_temperature_celsius is None:
            self.resume_temperature_celsius = self.max_temperature_celsius - 5.0
        if self.power_budget_watts <= 0:
            raise ValueError(f"power_budget_watts must be > 0, got {self.power_budget_watts}")
        if not self.resume_temperature_celsius < self.max_temperature_celsius < self.pause_temperature_celsius:
            raise ValueError(
                "need resume_temperature < max_temperature < pause_temperature, got "
                f"{self.resume_temperature_celsius} / {self.max_temperature_celsius} / {self.pause_temperature_celsius}"
            )
        if self.control_frequency <= 0:
            raise ValueError(f"control_frequency must be > 0 (updates per second), got {self.control_frequency}")
        if not 0.0 < self.min_factor <= 1.0:
            raise ValueError(f"min_factor must be in (0, 1], got {self.min_factor}")
        if not 0.0 < self.recovery_rate <= 1.0:
            raise ValueError(f"recovery_rate must be in (0, 1], got {self.recovery_rate}")
        if not 0.0 < self.temperature_gain < 1.0:
            raise ValueError(f"temperature_gain must be in (0, 1), got {self.temperature_gain}")
        if not 0.0 < self.bits_ema_alpha <= 1.0:
            raise ValueError(f"bits_ema_alpha must be in (0, 1], got {self.bits_ema_alpha}")
        if self.efficiency_patience < 1:
            raise ValueError(f"efficiency_patience must be >= 1, got {self.efficiency_patience}")
        if self.target_efficiency_bits_per_joule is not None and self.target_efficiency_bits_per_joule <= 0:
            raise ValueError("target_efficiency_bits_per_joule must be > 0 (or null for no target)")


class ThermalController:
    """Power-budget and temperature control on telemetry only; state is plain numbers."""

    def __init__(self, config: ThermalConfig, tokens_per_epoch: int | None = None, base_grad_accum: int = 1) -> None:
        if config.target_efficiency_bits_per_joule is not None and not tokens_per_epoch:
            raise ValueError("target_efficiency_bits_per_joule needs tokens_per_epoch to count bits learned")
        if config.actuator == "grad_accum" and base_grad_accum < 2:
            raise ValueError("actuator grad_accum needs gradient accumulation >= 2 to have micro-batches to drop")
        self.config = config
        self.tokens_per_epoch = tokens_per_epoch
        self.base_grad_accum = base_grad_accum
        self.factor = 1.0
        self.paused = False
        self.step_count = 0
        self.last_sleep_s = 0.0
        self.length_hat: float | None = None  # EMA of DataBPT + ParamBPT
        self.below_target = 0
        self.throttle_events = 0
        self.pause_events = 0
        self._reset_window()

    def _reset_window(self) -> None:
        self.window_s = 0.0
        self.window_power_j = 0.0  # sum of power * duration over steps that measured power
        self.window_power_s = 0.0
        self.window_bits = 0.0
        self.window_bits_energy = 0.0  # energy of the steps that also counted bits
        self.window_max_temp: float | None = None

    # -- per step -----------------------------------------------------------------------
    def step(self, telemetry: StepTelemetry) -> Action:
        c = self.config
        self.paused = False  # the loop waited out the pause asked for at the previous step, if any
        self.step_count += 1
        dt = telemetry.wall_time + self.last_sleep_s
        power, temp, energy = telemetry.power_watts, telemetry.temperature_celsius, telemetry.energy_joules
        if energy is None and power is not None:
            energy = power * dt
        if power is None and energy is not None and dt > 0:
            power = energy / dt

        bits = self._bits_learned(telemetry)
        self.window_s += dt
        if power is not None:
            self.window_power_s += dt
            self.window_power_j += power * dt
        if bits is not None and energy is not None:
            self.window_bits += bits
            self.window_bits_energy += energy
        if temp is not None:
            self.window_max_temp = temp if self.window_max_temp is None else max(self.window_max_temp, temp)

        reasons: list[str] = []
        stop = False
        if temp is not None and temp >= c.pause_temperature_celsius:
            self._pause()
            reasons.append(f"thermal: pause at {temp:.1f} C (hard limit {c.pause_temperature_celsius:g} C)")
        elif self.window_s >= 1.0 / c.control_frequency - 1e-9:  # tolerate float sums of step times
            stop = self._control(reasons)

        action = self._action(telemetry.wall_time, reasons, stop)
        action.report = {
            "control_factor": self.factor,
            "bits_learned": bits,
            "bits_per_joule": bits_per_joule(bits, energy),
            "landauer_efficiency": landauer_efficiency(bits, energy, temp),
        }
        if self.paused:
            action.pause_until_celsius = c.resume_temperature_celsius
        return action

    def _bits_learned(self, telemetry: StepTelemetry) -> float | None:
        length = telemetry.data_bpt + telemetry.param_bpt
        if not math.isfinite(length):
            return None
        previous = self.length_hat
        a = self.config.bits_ema_alpha
        self.length_hat = length if previous is None else (1.0 - a) * previous + a * length
        if not self.tokens_per_epoch:
            return None
        return 0.0 if previous is None else (previous - self.length_hat) * self.tokens_per_epoch

    def _control(self, reasons: list[str]) -> bool:
        c = self.config
        f = self.factor
        power = self.window_power_j / self.window_power_s if self.window_power_s > 0 else None
        temp = self.window_max_temp
        budget_factor = f * c.power_budget_watts / power if power else None
        over_power = power is not None and power > c.power_budget_watts
        over_temp = temp is not None and temp > c.max_temperature_celsius
        causes = []
        if over_power or over_temp:
            new = f
            if over_power:
                new = min(new, budget_factor)
                causes.append(f"{power:.1f} W over the {c.power_budget_watts:g} W budget")
            if over_temp:
                band = c.pause_temperature_celsius - c.max_temperature_celsius
                overshoot = min(1.0, (temp - c.max_temperature_celsius) / band)
                new = min(new, f * (1.0 - c.temperature_gain * overshoot))
                causes.append(f"{temp:.1f} C over {c.max_temperature_celsius:g} C")
        else:
            new = min(1.0, f + c.recovery_rate)
            if budget_factor is not None:
                new = min(new, budget_factor)
        self.factor = min(1.0, max(c.min_factor, new))
        if f >= 1.0 > self.factor:  # report transitions only, not every control period
            self.throttle_events += 1
            reasons.append(f"thermal: throttling to {self.factor:.2f} ({'; '.join(causes)})")
        elif f < 1.0 <= self.factor:
            reasons.append("thermal: back to full speed")
        stop = self._efficiency_check(reasons)
        self._reset_window()
        return stop

    def _efficiency_check(self, reasons: list[str]) -> bool:
        target = self.config.target_efficiency_bits_per_joule
        if target is None or self.window_bits_energy <= 0:
            return False
        efficiency = self.window_bits / self.window_bits_energy
        self.below_target = self.below_target + 1 if efficiency < target else 0
        if self.below_target >= self.config.efficiency_patience:
            reasons.append(
                f"thermal: stop, {efficiency:.3g} bits/J below the {target:.3g} bits/J target "
                f"for {self.below_target} control periods"
            )
            return True
        return False

    def _pause(self) -> None:
        self.paused = True
        self.pause_events += 1
        if self.factor >= 1.0:
            self.throttle_events += 1
        self.factor = max(self.config.min_factor, self.factor / 2.0)
        self._reset_window()

    def _action(self, wall_time: float, reasons: list[str], stop: bool) -> Action:
        c = self.config
        f = self.factor
        self.last_sleep_s = 0.0
        if c.actuator == "sleep":
            self.last_sleep_s = wall_time * (1.0 - f) / f
            return Action(sleep_s=self.last_sleep_s, stop=stop, reasons=reasons)
        if c.actuator == "lr":
            return Action(lr_factor=f, stop=stop, reasons=reasons)
        return Action(grad_accum=max(1, round(f * self.base_grad_accum)), stop=stop, reasons=reasons)

    # -- serialization --------------------------------------------------------------------
    _STATE = (
        "factor", "paused", "step_count", "last_sleep_s", "length_hat", "below_target", "throttle_events",
        "pause_events", "window_s", "window_power_j", "window_power_s", "window_bits",
        "window_bits_energy", "window_max_temp",
    )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)


def summarize_steps(rows: list[dict[str, Any]], power_budget_watts: float) -> dict[str, Any]:
    """Run-level figures from per-step rows (duration_s, energy_joules, power_watts,
    temperature_celsius, bits_learned). Averages are weighted by time or energy; a figure
    that nothing measured is None."""
    measured = [r for r in rows if r.get("energy_joules") is not None]
    powered = [r for r in rows if r.get("power_watts") is not None]
    energy = sum(r["energy_joules"] for r in measured)
    seconds = sum(r["duration_s"] for r in measured)
    hot = [r for r in rows if r.get("temperature_celsius") is not None]
    hot_s = sum(r["duration_s"] for r in hot)
    learned = [r for r in measured if r.get("bits_learned") is not None]
    learned_energy = sum(r["energy_joules"] for r in learned)
    landauer = [r for r in learned if r.get("temperature_celsius") is not None]
    landauer_energy = sum(r["energy_joules"] for r in landauer)
    return {
        "steps_measured": len(measured),
        "step_energy_joules": energy if measured else None,
        "step_seconds": seconds if measured else None,
        "avg_step_power_watts": energy / seconds if measured and seconds > 0 else None,
        "avg_temperature_celsius": (
            sum(r["temperature_celsius"] * r["duration_s"] for r in hot) / hot_s if hot and hot_s > 0 else None
        ),
        "max_temperature_celsius": max((r["temperature_celsius"] for r in hot), default=None),
        "time_over_budget_s": (
            sum(r["duration_s"] for r in powered if r["power_watts"] > power_budget_watts) if powered else None
        ),
        "bits_learned": sum(r["bits_learned"] for r in learned) if learned else None,
        "bits_per_joule": bits_per_joule(sum(r["bits_learned"] for r in learned), learned_energy) if learned else None,
        "avg_landauer_efficiency": (
            sum(landauer_joules(r["bits_learned"], r["temperature_celsius"]) for r in landauer) / landauer_energy
            if landauer and landauer_energy > 0
            else None
        ),
    }
