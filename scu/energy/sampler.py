"""Background sampling of a sensor, and the energy of each optimizer step.

A daemon thread reads the sensor every `period_s` and integrates energy: counter deltas
when the sensor has a counter (exact), otherwise the trapezoid rule over power samples.
The loop calls `mark()` at the end of every optimizer step; it reads the sensor once more so
that a step's energy is the integral up to that instant, and the hottest temperature and
the throttle reasons are those seen since the previous mark. Between long steps the thread
keeps the integral of power samples and the temperature maximum current, and reads RAPL
counters often enough that they cannot wrap twice unseen.

A failing read never stops training: it is counted (`errors`) and skipped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from scu.energy.base import Reading, Sensor


@dataclass(frozen=True)
class Mark:
    time: float
    energy_joules: float | None  # integrated since the sampler started
    temperature_celsius: float | None  # hottest since the previous mark
    memory_temperature_celsius: float | None
    throttle_reasons: tuple[str, ...]  # seen since the previous mark


@dataclass(frozen=True)
class Interval:
    """What happened between two marks (one optimizer step, or a pause)."""

    duration_s: float
    energy_joules: float | None
    power_watts: float | None
    temperature_celsius: float | None
    memory_temperature_celsius: float | None
    throttle_reasons: tuple[str, ...]

    @classmethod
    def between(cls, start: Mark, end: Mark) -> Interval:
        duration = end.time - start.time
        energy = None
        if start.energy_joules is not None and end.energy_joules is not None:
            energy = end.energy_joules - start.energy_joules
        power = energy / duration if energy is not None and duration > 0 else None
        return cls(duration, energy, power, end.temperature_celsius, end.memory_temperature_celsius, end.throttle_reasons)


def _hotter(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class Sampler:
    def __init__(self, sensor: Sensor, period_s: float = 0.1) -> None:
        if period_s <= 0:
            raise ValueError(f"sampling period must be > 0 s, got {period_s}")
        self.sensor = sensor
        self.period_s = period_s
        self.errors = 0
        self.last_error: str | None = None
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy: float | None = None
        self._last_counter: Reading | None = None  # last reading that carried the energy counter
        self._last_power: Reading | None = None  # last reading that carried power (power-only sensors)
        self._max_temp: float | None = None
        self._max_mem_temp: float | None = None
        self._reasons: dict[str, None] = {}  # ordered set

    # -- sampling -------------------------------------------------------------------------
    def _sample_locked(self) -> Reading | None:
        try:
            r = self.sensor.read()
        except Exception as e:  # a sensor bug or a vanished device must not kill training
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            return None
        self.samples += 1
        if r.energy_joules is not None:
            if self._last_counter is None:
                self._energy = 0.0 if self._energy is None else self._energy
            else:
                self._energy += max(0.0, r.energy_joules - self._last_counter.energy_joules)
            self._last_counter = r
        elif r.power_watts is not None and self._last_counter is None:
            if self._last_power is None:
                self._energy = 0.0
            else:
                dt = r.time - self._last_power.time
                self._energy += 0.5 * (r.power_watts + self._last_power.power_watts) * dt
            self._last_power = r
        self._max_temp = _hotter(self._max_temp, r.temperature_celsius)
        self._max_mem_temp = _hotter(self._max_mem_temp, r.memory_temperature_celsius)
        self._reasons.update(dict.fromkeys(r.throttle_reasons))
        return r

    def sample(self) -> Reading | None:
        """Read the sensor once and fold the reading in (the thread calls this every period)."""
        with self._lock:
            return self._sample_locked()

    def mark(self) -> Mark:
        """Read now and return the running totals; resets the since-last-mark maxima."""
        with self._lock:
            r = self._sample_locked()
            m = Mark(
                time=r.time if r is not None else self.sensor.clock(),
                energy_joules=self._energy,
                temperature_celsius=self._max_temp,
                memory_temperature_celsius=self._max_mem_temp,
                throttle_reasons=tuple(self._reasons),
            )
            self._max_temp = self._max_mem_temp = None
            self._reasons = {}
            return m

    def latest_temperature(self) -> float | None:
        """A fresh reading's temperature (used while paused)."""
        r = self.sample()
        return None if r is None else r.temperature_celsius

    # -- thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def start(self) -> Mark:
        """Take the first reading (the zero of every integral) and start the thread (for a live sensor)."""
        first = self.mark()
        if self.sensor.live:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="scu-energy-sampler", daemon=True)
            self._thread.start()
        return first

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 5 * self.period_s))
            self._thread = None

    def describe(self) -> dict[str, Any]:
        return {**self.sensor.describe(), "period_s": self.period_s, "samples": self.samples, "read_errors": self.errors,
                "last_error": self.last_error}  # fmt: skip
