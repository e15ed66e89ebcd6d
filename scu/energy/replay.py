"""Replay a recorded power/temperature trace as if it were a live sensor.

The CSV has a header and the columns time (seconds), watts and celsius (either of the last
two may be absent). The trace plays against the sensor's clock from the moment it is opened,
`speed` times faster than real time; values between rows are interpolated linearly, and after
the last row the last values hold. Energy is the exact integral of the piecewise-linear
power, so a replayed run's energy figures do not depend on the sampling period.
"""

from __future__ import annotations

import bisect
import csv
import math
import time
from pathlib import Path
from typing import Any

from scu import ScuError
from scu.energy.base import Clock, Reading, Sensor

COLUMNS = {
    "time": ("time", "time_s", "t", "seconds"),
    "watts": ("watts", "power_watts", "power", "w"),
    "celsius": ("celsius", "temperature_celsius", "temperature", "temp", "c"),
}


class Trace:
    """A validated (time, watts, celsius) series with its running energy integral."""

    def __init__(self, times: list[float], watts: list[float] | None, celsius: list[float] | None) -> None:
        self.times = times
        self.watts = watts
        self.celsius = celsius
        self.energy = [0.0]  # joules from the first row to each row
        if watts is not None:
            for i in range(1, len(times)):
                self.energy.append(self.energy[-1] + 0.5 * (watts[i] + watts[i - 1]) * (times[i] - times[i - 1]))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        if not path.is_file():
            raise ScuError(f"power trace not found: {path}; pass a CSV with columns time,watts,celsius")
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) < 2:
            raise ScuError(f"{path}: a power trace needs a header row and at least one data row")
        header = [h.strip().lower() for h in rows[0]]
        where = {key: next((header.index(a) for a in aliases if a in header), None) for key, aliases in COLUMNS.items()}
        if where["time"] is None or (where["watts"] is None and where["celsius"] is None):
            raise ScuError(f"{path}: header {rows[0]} needs a time column and watts and/or celsius columns")
        series: dict[str, list[float]] = {key: [] for key, col in where.items() if col is not None}
        for n, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            for key in series:
                try:
                    value = float(row[where[key]])
                except (IndexError, ValueError):
                    raise ScuError(f"{path}:{n}: {key} is not a number ({row}); every row needs all columns") from None
                if not math.isfinite(value):
                    raise ScuError(f"{path}:{n}: {key} must be finite, got {value}")
                series[key].append(value)
        times = series["time"]
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ScuError(f"{path}: time must increase strictly from row to row")
        if any(w < 0 for w in series.get("watts", [])):
            raise ScuError(f"{path}: watts must be >= 0")
        return cls(times, series.get("watts"), series.get("celsius"))

    def _interp(self, values: list[float], t: float) -> float:
        if t <= self.times[0]:
            return values[0]
        if t >= self.times[-1]:
            return values[-1]
        i = bisect.bisect_right(self.times, t)
        t0, t1 = self.times[i - 1], self.times[i]
        return values[i - 1] + (values[i] - values[i - 1]) * (t - t0) / (t1 - t0)

    def at(self, elapsed: float) -> tuple[float | None, float | None, float | None]:
        """(watts, celsius, joules since the first row) at `elapsed` seconds after the first row."""
        t = self.times[0] + elapsed
        celsius = None if self.celsius is None else self._interp(self.celsius, t)
        if self.watts is None:
            return None, celsius, None
        watts = self._interp(self.watts, t)
        if t >= self.times[-1]:
            return watts, celsius, self.energy[-1] + self.watts[-1] * (t - self.times[-1])
        i = bisect.bisect_right(self.times, t)
        t0 = self.times[i - 1]
        return watts, celsius, self.energy[i - 1] + 0.5 * (self.watts[i - 1] + watts) * (t - t0)

    @property
    def duration(self) -> float:
        return self.times[-1] - self.times[0]


class ReplaySensor(Sensor):
    name = "replay"

    def __init__(self, path: str | Path, speed: float = 1.0, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        if speed <= 0:
            raise ScuError(f"replay speed must be > 0, got {speed}")
        self.path = Path(path)
        self.trace = Trace.load(self.path)
        self.speed = speed
        self.start = clock()

    def read(self) -> Reading:
        t = self.clock()
        watts, celsius, joules = self.trace.at((t - self.start) * self.speed)
        return Reading(time=t, energy_joules=joules, power_watts=watts, temperature_celsius=celsius)

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "trace": str(self.path), "rows": len(self.trace.times), "speed": self.speed}
