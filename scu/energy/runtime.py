"""T-SCU in a training loop: the `tscu:` config section and `ThermalRun`.

`ThermalRun` sits in the loop's set of controllers (it has `step`, `state_dict`,
`load_state_dict`). Its `step` measures the optimizer step just taken (energy, power and the
hottest temperature since the previous step, from the background sampler), fills them into
the `StepTelemetry`, runs the `ThermalController`, and, when the controller paused training,
blocks until the sensor reads at or below the resume threshold. The loop calls `start` before
the first step, `write` when it checkpoints, and `close` at the end; the outputs are
tscu_training_metrics.json (one row per step) and tscu_analysis.json (run totals).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scu import ScuError
from scu.core.telemetry import Action, StepTelemetry
from scu.core.thermal import ThermalConfig, ThermalController, summarize_steps
from scu.energy import Interval, Mark, Sampler, Sensor, Source, open_sensor
from scu.report.records import atomic_write_json

METRICS_FILE = "tscu_training_metrics.json"
ANALYSIS_FILE = "tscu_analysis.json"


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


class ThermalRun:
    def __init__(
        self,
        config: TscuConfig,
        tokens_per_epoch: int | None,
        base_grad_accum: int = 1,
        sensor: Sensor | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        try:
            self.controller = ThermalController(config, tokens_per_epoch, base_grad_accum)
        except ValueError as e:
            raise ScuError(f"tscu: {e}") from None
        self.config = config
        self.sensor = sensor or open_sensor(config.sensor, config.power_trace, config.replay_speed)
        self.sampler = Sampler(self.sensor, config.sample_period_s)
        self.sleep = sleep
        self.rows: list[dict[str, Any]] = []
        self.pause_s = 0.0
        self.pause_energy_joules: float | None = 0.0
        self.out: Path | None = None
        self._mark: Mark | None = None

    # -- loop hooks -----------------------------------------------------------------------
    def start(self, out: str | Path, step: int = 0, background: bool = True) -> None:
        """Zero the energy integrals now; on resume from `step`, keep the rows up to it."""
        self.out = Path(out)
        path = self.out / METRICS_FILE
        if step and path.exists():
            self.rows = [r for r in json.loads(path.read_text())["steps"] if r["step"] <= step]
        self._mark = self.sampler.start() if background else self.sampler.mark()

    def step(self, telemetry: StepTelemetry) -> Action:
        if self._mark is None:
            raise RuntimeError("ThermalRun.start() must be called before the first step")
        end = self.sampler.mark()
        interval = Interval.between(self._mark, end)
        self._mark = end
        telemetry.power_watts = interval.power_watts
        telemetry.temperature_celsius = interval.temperature_celsius
        telemetry.energy_joules = interval.energy_joules
        action = self.controller.step(telemetry)
        report = self.controller.report
        paused_s = self._wait_while_paused(action) if self.controller.paused else 0.0
        self.rows.append(
            {
                "step": telemetry.step,
                "loss": telemetry.loss_nats,
                "power_watts": interval.power_watts,
                "temperature_celsius": interval.temperature_celsius,
                "memory_temperature_celsius": interval.memory_temperature_celsius,
                "energy_joules": interval.energy_joules,
                "duration_s": interval.duration_s,
                "control_factor": report.factor,
                "learning_rate": telemetry.lr,
                "bits_learned": report.bits_learned,
                "bits_per_joule": report.bits_per_joule,
                "landauer_efficiency": report.landauer_efficiency,
                "paused_s": paused_s,
                "hardware_throttle": list(interval.throttle_reasons),
                "reasons": list(action.reasons),
            }
        )
        return action

    def _wait_while_paused(self, action: Action) -> float:
        """Block until the controller lets training resume; the pause's energy is kept apart."""
        clock = self.sensor.clock
        began = clock()
        temperature = self.sampler.latest_temperature()
        while self.controller.cool(temperature):
            if clock() - began >= self.config.max_pause_s:
                action.stop = True
                action.reasons.append(
                    f"thermal: stop, paused {self.config.max_pause_s:g} s without cooling to "
                    f"{self.config.resume_temperature_celsius:g} C (or without a temperature reading)"
                )
                break
            self.sleep(self.config.pause_poll_s)
            temperature = self.sampler.latest_temperature()
        else:
            action.reasons.append(f"thermal: resumed at {temperature:.1f} C after {clock() - began:.0f} s")
        after = self.sampler.mark()
        pause = Interval.between(self._mark, after)
        self._mark = after
        self.pause_s += pause.duration_s
        if self.pause_energy_joules is not None:
            self.pause_energy_joules = None if pause.energy_joules is None else self.pause_energy_joules + pause.energy_joules
        return pause.duration_s

    def write(self) -> None:
        """Both output files, atomically, from everything recorded so far."""
        if self.out is None:
            return
        atomic_write_json(self.out / METRICS_FILE, {"sensor": self.sensor.name, "steps": self.rows})
        atomic_write_json(self.out / ANALYSIS_FILE, self.analysis())

    def close(self) -> None:
        """Stop sampling and release the sensor (write() the outputs first)."""
        self.sampler.stop()
        self.sensor.close()

    # -- results --------------------------------------------------------------------------
    def analysis(self) -> dict[str, Any]:
        c = self.config
        s = summarize_steps(self.rows, c.power_budget_watts)
        total = None
        if s["step_energy_joules"] is not None and self.pause_energy_joules is not None:
            total = s["step_energy_joules"] + self.pause_energy_joules
        seconds = (s["step_seconds"] or 0.0) + self.pause_s
        throttle = Counter(reason for r in self.rows for reason in r["hardware_throttle"])
        return {
            "sensor": self.sensor.name,
            "avg_power_watts": total / seconds if total is not None and seconds > 0 else None,
            "avg_temperature_celsius": s["avg_temperature_celsius"],
            "max_temperature_celsius": s["max_temperature_celsius"],
            "total_energy_joules": total,
            "bits_learned": s["bits_learned"],
            "bits_per_joule": s["bits_per_joule"],
            "avg_landauer_efficiency": s["avg_landauer_efficiency"],
            "time_over_budget_s": s["time_over_budget_s"],
            "throttle_events": self.controller.throttle_events,
            "pause_events": self.controller.pause_events,
            "paused_s": self.pause_s,
            "pause_energy_joules": self.pause_energy_joules if total is not None else None,
            "final_control_factor": self.controller.factor,
            "hardware_throttle_steps": dict(throttle),
            "steps": len(self.rows),
            "steps_with_energy": s["steps_measured"],
            "sensor_detail": self.sampler.describe(),
            "controller": self.controller.describe(),
        }

    # -- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "pause_s": self.pause_s,
            "pause_energy_joules": self.pause_energy_joules,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.pause_s = state["pause_s"]
        self.pause_energy_joules = state["pause_energy_joules"]


def _fmt(value: float | None, spec: str, unit: str) -> str | None:
    return None if value is None else f"{value:{spec}}{unit}"


def tscu_summary(out: str | Path) -> str:
    """One line for the end of `scu train`, from tscu_analysis.json."""
    a = json.loads((Path(out) / ANALYSIS_FILE).read_text())
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
