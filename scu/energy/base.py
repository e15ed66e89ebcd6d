"""One reading interface for every power/temperature source.

A sensor reports what the hardware measured and nothing else: a quantity it cannot read
is None. Cumulative energy is preferred over power because a counter delta is exact,
while power is a sample that has to be integrated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]


class SensorUnavailable(Exception):
    """A source cannot be used here; the message says why (it ends up in the run's outputs)."""


@dataclass(frozen=True)
class Reading:
    time: float  # the sensor's clock, seconds
    energy_joules: float | None = None  # cumulative since the sensor was opened (all devices)
    power_watts: float | None = None  # instantaneous total over all devices
    temperature_celsius: float | None = None  # hottest device
    memory_temperature_celsius: float | None = None  # hottest memory (HBM GPUs)
    throttle_reasons: tuple[str, ...] = ()  # what the hardware says is limiting its clocks now


class Sensor:
    """Base of all sources. `read()` must be cheap, thread-safe against itself, and never raise
    for a transient failure: a failed quantity is None in that reading."""

    name = "sensor"
    live = True  # False: nothing to sample, so no background thread

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock

    def read(self) -> Reading:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What was found (devices, capabilities), recorded in the run's analysis."""
        return {"source": self.name}

    def close(self) -> None:
        """Release the source (subprocesses, library handles)."""


class Unavailable(Sensor):
    """No sensor: every reading is None, so every derived figure is null."""

    name = "unavailable"
    live = False

    def __init__(self, reason: str, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        self.reason = reason

    def read(self) -> Reading:
        return Reading(time=self.clock())

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "reason": self.reason}
