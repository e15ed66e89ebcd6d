"""Power, energy and temperature telemetry: one interface (`Sensor.read() -> Reading`), several sources.

`open_sensor("auto")` tries NVIDIA NVML, then Apple Silicon (macOS), then RAPL (Linux), and
otherwise returns an `Unavailable` sensor whose readings are all None, with the reasons.
Nothing here estimates a figure it did not measure.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

from scu import ScuError
from scu.energy.base import Clock, Reading, Sensor, SensorUnavailable, Unavailable
from scu.energy.sampler import Interval, Mark, Sampler

Source = Literal["auto", "nvml", "rapl", "apple", "replay", "none"]
SOURCES: tuple[str, ...] = get_args(Source)

__all__ = ["Interval", "Mark", "Reading", "Sampler", "Sensor", "SensorUnavailable", "Unavailable", "open_sensor", "SOURCES"]


def _nvml(clock: Clock) -> Sensor:
    from scu.energy.nvml import NvmlSensor

    return NvmlSensor(clock=clock)


def _rapl(clock: Clock) -> Sensor:
    from scu.energy.rapl import RaplSensor

    return RaplSensor(clock=clock)


def _apple(clock: Clock) -> Sensor:
    from scu.energy.apple import open_apple

    return open_apple(clock=clock)


OPENERS: dict[str, Callable[[Clock], Sensor]] = {"nvml": _nvml, "apple": _apple, "rapl": _rapl}


def auto_order() -> list[str]:
    return ["nvml", "apple", "rapl"] if sys.platform == "darwin" else ["nvml", "rapl"]


def open_sensor(
    source: str = "auto", trace: str | Path | None = None, replay_speed: float = 1.0, clock: Clock = time.monotonic
) -> Sensor:
    """The sensor to use. An explicitly named source that is missing is a user error;
    "auto" falls back to `Unavailable` carrying every reason."""
    if source not in SOURCES:
        raise ScuError(f"unknown sensor {source!r}; use one of {', '.join(SOURCES)}")
    if trace is not None:
        if source not in ("auto", "replay"):
            raise ScuError(f"a power trace replaces the sensor; drop --power-trace or set the sensor to replay (not {source})")
        from scu.energy.replay import ReplaySensor

        return ReplaySensor(trace, speed=replay_speed, clock=clock)
    if source == "replay":
        raise ScuError("sensor replay needs a trace; pass --power-trace CSV (columns time,watts,celsius)")
    if source == "none":
        return Unavailable("disabled by configuration (sensor: none)", clock=clock)
    if source != "auto":
        try:
            return OPENERS[source](clock)
        except SensorUnavailable as e:
            raise ScuError(f"{e}; or use sensor auto to run without it") from None
    reasons = []
    for name in auto_order():
        try:
            return OPENERS[name](clock)
        except SensorUnavailable as e:
            reasons.append(str(e))
    return Unavailable("; ".join(reasons), clock=clock)
