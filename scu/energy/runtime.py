"""T-SCU in a training loop: the `tscu:` config section, the energy meter and the T-SCU record.

`EnergyMeter` is the telemetry source for power, energy and temperature: at the end of every
optimizer step, before any controller runs, it fills the step's `StepTelemetry` from the
background sampler (energy since the previous step, its average power, the hottest reading). When
the thermal controller asks for a pause, the loop calls `wait_until_cool`, which blocks, re-reading
the sensor, until the temperature is back under the threshold. `TscuRecord` keeps the per-step rows
and the pause totals and writes tscu_training_metrics.json and tscu_analysis.json.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scu.core.telemetry import StepTelemetry
from scu.core.thermal import ThermalConfig, ThermalController, summarize_steps
from scu.energy import Interval, Mark, Sampler, Sensor, Source, open_sensor
from scu.report.records import atomic_write_json, read_json
from scu.report.schema import TSCU_ANALYSIS_FILE as ANALYSIS_FILE
from scu.report.schema import TSCU_METRICS_FILE as METRICS_FILE
from scu.report.schema import TscuRow


@dataclass
class TscuConfig(ThermalConfig):
    """The `tscu:` config section: the controller's settings plus where the readings come from."""

    enabled: bool = False  # run T-SCU in `scu train` (also: --controller thermal)
    sensor: Source = "auto"
    power_trace: str | None = None  # CSV (time, watts, celsius) replayed instead of a sensor
    replay_speed: float = 1.0  # trace seconds per wall-clock second
    sample_period_s: float = 0.1  # background sampling period
    pause_poll_s: float = 1.0  # how often a paused run re-reads the temperature
    max_pause_s: float = 1800.0  # a pause longer than this stops the run (the device is not cooling)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("replay_speed", "sample_period_s", "pause_poll_s", "max_pause_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Pause:
    """A pause the loop waited out: its interval (energy kept apart from the steps') and what it ended with."""

    interval: Interval
    reason: str
    cooled: bool  # False: max_pause_s passed without a cool reading, and the run must stop


class EnergyMeter:
    """Power, energy and temperature of each optimizer step, from one sensor sampled in the background."""

    def __init__(self, config: TscuConfig, sensor: Sensor | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.sensor = sensor or open_sensor(config.sensor, config.power_trace, config.replay_speed)
        self.sampler = Sampler(self.sensor, config.sample_period_s)
        self.sleep = sleep
        self._mark: Mark | None = None

    def start(self, background: bool = True) -> None:
        """Zero the energy integrals now (before the first step)."""
        self._mark = self.sampler.start() if background else self.sampler.mark()

    def measure(self, telemetry: StepTelemetry) -> Interval:
        """Fill the step's power, energy and temperature fields; returns the interval since the previous step."""
        if self._mark is None:
            raise RuntimeError("EnergyMeter.start() must be called before the first step")
        end = self.sampler.mark()
        interval = Interval.between(self._mark, end)
        self._mark = end
        telemetry.power_watts = interval.power_watts
        telemetry.temperature_celsius = interval.temperature_celsius
        telemetry.energy_joules = interval.energy_joules
        telemetry.memory_temperature_celsius = interval.memory_temperature_celsius
        telemetry.throttle_reasons = interval.throttle_reasons
        return interval

    def wait_until_cool(self, resume_celsius: float) -> Pause:
        """Block until a reading at or below `resume_celsius`; a missing reading cannot show that the device
        cooled, so it keeps waiting, for at most max_pause_s."""
        clock = self.sensor.clock
        began = clock()
        temperature = self.sampler.latest_temperature()
        cooled = True
        while temperature is None or temperature > resume_celsius:
            if clock() - began >= self.config.max_pause_s:
                cooled = False
                break
            self.sleep(self.config.pause_poll_s)
            temperature = self.sampler.latest_temperature()
        if cooled:
            reason = f"thermal: resumed at {temperature:.1f} C after {clock() - began:.0f} s"
        else:
            reason = (f"thermal: stop, paused {self.config.max_pause_s:g} s without cooling to {resume_celsius:g} C "
                      "(or without a temperature reading)")
        after = self.sampler.mark()
        interval = Interval.between(self._mark, after)
        self._mark = after
        return Pause(interval, reason, cooled)

    def close(self) -> None:
        """Stop sampling and release the sensor."""
        self.sampler.stop()
        self.sensor.close()


class TscuRecord:
    """T-SCU's files: one row per step, the pauses, and the run's analysis."""

    def __init__(self) -> None:
        self.rows: list[TscuRow] = []
        self.pause_s = 0.0
        self.pause_energy_joules: float | None = 0.0

    def add_pause(self, pause: Pause) -> None:
        self.pause_s += pause.interval.duration_s
        if self.pause_energy_joules is not None:
            energy = pause.interval.energy_joules
            self.pause_energy_joules = None if energy is None else self.pause_energy_joules + energy

    def reload(self, out: Path, step: int) -> None:
        """On resume from `step`: the rows up to it, from the run's file."""
        saved = read_json(out / METRICS_FILE) if step else None
        self.rows = [r for r in saved["steps"] if r["step"] <= step] if saved else []

    def analysis(self, controller: ThermalController, meter: EnergyMeter) -> dict[str, Any]:
        s = summarize_steps(self.rows, controller.config.power_budget_watts)
        total = None
        if s["step_energy_joules"] is not None and self.pause_energy_joules is not None:
            total = s["step_energy_joules"] + self.pause_energy_joules
        seconds = (s["step_seconds"] or 0.0) + self.pause_s
        throttle = Counter(reason for r in self.rows for reason in r["hardware_throttle"])
        return {
            "sensor": meter.sensor.name,
            "avg_power_watts": total / seconds if total is not None and seconds > 0 else None,
            "avg_temperature_celsius": s["avg_temperature_celsius"],
            "max_temperature_celsius": s["max_temperature_celsius"],
            "total_energy_joules": total,
            "bits_learned": s["bits_learned"],
            "bits_per_joule": s["bits_per_joule"],
            "avg_landauer_efficiency": s["avg_landauer_efficiency"],
            "time_over_budget_s": s["time_over_budget_s"],
            "throttle_events": controller.throttle_events,
            "pause_events": controller.pause_events,
            "paused_s": self.pause_s,
            "pause_energy_joules": self.pause_energy_joules if total is not None else None,
            "final_control_factor": controller.factor,
            "hardware_throttle_steps": dict(throttle),
            "steps": len(self.rows),
            "steps_with_energy": s["steps_measured"],
            "sensor_detail": meter.sampler.describe(),
            "controller": controller.describe(),
        }

    def write(self, out: Path, controller: ThermalController, meter: EnergyMeter) -> None:
        """Both files, atomically, from everything recorded so far."""
        atomic_write_json(out / METRICS_FILE, {"sensor": meter.sensor.name, "steps": self.rows})
        atomic_write_json(out / ANALYSIS_FILE, self.analysis(controller, meter))

    def state_dict(self) -> dict[str, Any]:
        return {"pause_s": self.pause_s, "pause_energy_joules": self.pause_energy_joules}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pause_s = state["pause_s"]
        self.pause_energy_joules = state["pause_energy_joules"]


def _fmt(value: float | None, spec: str, unit: str) -> str | None:
    return None if value is None else f"{value:{spec}}{unit}"


def tscu_summary(out: str | Path) -> str:
    """One line for the end of `scu train`, from tscu_analysis.json."""
    a = read_json(Path(out) / ANALYSIS_FILE)
    if a["sensor"] == "unavailable":
        return f"  T-SCU: no power/temperature sensor ({a['sensor_detail']['reason']}); its figures are null"
    parts = [
        _fmt(a["total_energy_joules"], ".4g", " J"),
        _fmt(a["avg_power_watts"], ".1f", " W avg"),
        _fmt(a["avg_temperature_celsius"], ".1f", " C avg"),
        _fmt(a["bits_per_joule"], ".3g", " bits/J"),
        f"{a['throttle_events']} throttle event(s)",
        f"{a['pause_events']} pause(s) ({a['paused_s']:.0f} s)" if a["pause_events"] else None,
    ]
    return f"  T-SCU [{a['sensor']}]: " + ", ".join(p for p in parts if p)
