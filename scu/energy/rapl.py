"""Intel/AMD RAPL energy counters through the Linux powercap sysfs tree.

Each zone exposes `energy_uj`, a microjoule counter that wraps to 0 after
`max_energy_range_uj`. Reading it at least once per wrap period (minutes at hundreds of
watts) and adding the wrapped-around part keeps the total exact.

Zones counted: `psys` alone when present (it covers the whole platform); otherwise every
`package-N` zone plus `dram` subzones (package energy does not include DRAM). Core/uncore
subzones are inside their package, and `intel-rapl-mmio` zones mirror the package through
another interface, so neither is added. Temperature comes from the CPU's hwmon driver
(coretemp, k10temp, zenpower) when present; RAPL itself has none.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scu.energy.base import Clock, Reading, Sensor, SensorUnavailable

POWERCAP_ROOT = Path("/sys/class/powercap")
HWMON_ROOT = Path("/sys/class/hwmon")
CPU_HWMON_DRIVERS = {"coretemp", "k10temp", "zenpower"}


@dataclass
class Zone:
    path: Path
    name: str
    max_range_uj: int
    fd: int  # energy_uj, kept open: a pread is several times cheaper than open/read/close
    last_uj: int = 0
    total_uj: int = 0  # energy since the sensor was opened, wrap-arounds included

    def advance(self, now_uj: int) -> None:
        delta = now_uj - self.last_uj
        if delta < 0:  # the counter wrapped past max_energy_range_uj back to 0
            delta += self.max_range_uj
        self.total_uj += delta
        self.last_uj = now_uj


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _pread_int(fd: int) -> int:
    """Re-read a sysfs attribute through an open descriptor (offset 0 regenerates it)."""
    return int(os.pread(fd, 64, 0))


def _zone_name(path: Path) -> str:
    try:
        return (path / "name").read_text().strip()
    except OSError:
        return ""


def find_zones(root: Path) -> list[Zone]:
    """The zones to sum (see the module docstring); raises SensorUnavailable with the reason."""
    if not root.is_dir():
        raise SensorUnavailable(f"RAPL: {root} does not exist (no powercap driver)")
    candidates = sorted(p for p in root.iterdir() if p.name.startswith("intel-rapl:") and (p / "energy_uj").exists())
    if not candidates:
        raise SensorUnavailable(f"RAPL: no intel-rapl zones with energy_uj under {root}")
    top = [p for p in candidates if p.name.count(":") == 1]
    psys = [p for p in top if _zone_name(p) == "psys"]
    chosen = psys or [p for p in top if _zone_name(p).startswith("package")]
    if not psys:
        chosen += [p for p in candidates if p.name.count(":") == 2 and _zone_name(p) == "dram"]
    if not chosen:
        raise SensorUnavailable(f"RAPL: no package or psys zone under {root}")
    zones = []
    for p in chosen:
        try:
            fd = os.open(p / "energy_uj", os.O_RDONLY)
            start = _pread_int(fd)
            max_range = _read_int(p / "max_energy_range_uj")
        except PermissionError:
            raise SensorUnavailable(
                f"RAPL: {p / 'energy_uj'} is readable by root only; run as root or "
                f"`sudo chmod a+r {root}/intel-rapl:*/energy_uj`"
            ) from None
        except (OSError, ValueError) as e:
            raise SensorUnavailable(f"RAPL: cannot read {p}: {e}") from None
        zones.append(Zone(path=p, name=_zone_name(p), max_range_uj=max_range, fd=fd, last_uj=start))
    return zones


def find_cpu_temperatures(root: Path) -> list[Path]:
    """temp*_input files of the CPU's hwmon driver(s)."""
    if not root.is_dir():
        return []
    inputs: list[Path] = []
    for chip in sorted(root.iterdir()):
        if _zone_name(chip) in CPU_HWMON_DRIVERS:
            inputs.extend(sorted(chip.glob("temp*_input")))
    return inputs


class RaplSensor(Sensor):
    name = "rapl"

    def __init__(self, root: str | Path = POWERCAP_ROOT, hwmon_root: str | Path = HWMON_ROOT, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        self.root = Path(root)
        self.zones = find_zones(self.root)
        self.temperature_inputs = find_cpu_temperatures(Path(hwmon_root))
        self._temperature_fds = [os.open(path, os.O_RDONLY) for path in self.temperature_inputs]

    def read(self) -> Reading:
        t = self.clock()
        energy: float | None = 0.0
        for zone in self.zones:
            try:
                zone.advance(_pread_int(zone.fd))
            except (OSError, ValueError):
                energy = None
                continue
            if energy is not None:
                energy += zone.total_uj * 1e-6
        return Reading(time=t, energy_joules=energy, temperature_celsius=self._temperature())

    def _temperature(self) -> float | None:
        values = []
        for fd in self._temperature_fds:
            try:
                values.append(_pread_int(fd) / 1000.0)
            except (OSError, ValueError):
                continue
        return max(values) if values else None

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "zones": [f"{z.path.name} ({z.name})" for z in self.zones],
            "temperature_inputs": len(self.temperature_inputs),
        }

    def close(self) -> None:
        for fd in [z.fd for z in self.zones] + self._temperature_fds:
            os.close(fd)
        self.zones, self._temperature_fds = [], []
