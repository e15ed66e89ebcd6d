"""Apple Silicon: `powermetrics` when running as root, else an IOReport-based package if installed.

`powermetrics -f plist` streams one plist per sampling interval, separated by NUL bytes;
each carries the CPU, GPU and ANE energy of the interval (mJ), the combined power (mW) and
the thermal pressure level. Without root the optional `zeus-apple-silicon` package reads
the same IOReport energy counters. Neither reports a die temperature in degrees, so the
temperature stays None (thermal pressure above "Nominal" is reported as a throttle reason).
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import threading
import time

from scu.energy.base import Clock, Reading, Sensor, SensorUnavailable

POWERMETRICS_ENERGY_KEYS = ("cpu_energy", "gpu_energy", "ane_energy")  # mJ over the sample interval
IOREPORT_FIELDS = ("cpu_total_mj", "cpu_mj", "gpu_mj", "gpu_sram_mj", "ane_mj", "dram_mj")


def parse_powermetrics_sample(data: bytes) -> tuple[float | None, float | None, str | None]:
    """(energy of the interval in J, combined power in W, thermal pressure) from one plist sample."""
    sample = plistlib.loads(data.strip(b"\0\n\r\t "))
    processor = sample.get("processor", {})
    parts = [processor[k] for k in POWERMETRICS_ENERGY_KEYS if k in processor]
    energy = sum(parts) / 1000.0 if parts else None
    power = processor.get("combined_power")
    return energy, None if power is None else power / 1000.0, sample.get("thermal_pressure")


class PowermetricsSensor(Sensor):
    """Reads the newest sample of a running `powermetrics` stream; energy accumulates per sample."""

    name = "powermetrics"

    def __init__(self, interval_ms: int = 100, command: list[str] | None = None, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        if command is None:
            if sys.platform != "darwin" or shutil.which("powermetrics") is None:
                raise SensorUnavailable("powermetrics: not on macOS")
            if os.geteuid() != 0:
                raise SensorUnavailable("powermetrics: needs root (sudo); without it install zeus-apple-silicon for IOReport")
            command = ["powermetrics", "--samplers", "cpu_power,gpu_power,thermal", "-i", str(interval_ms), "-f", "plist"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._lock = threading.Lock()
        self._energy: float | None = None
        self._power: float | None = None
        self._pressure: str | None = None
        self._reader = threading.Thread(target=self._follow, name="scu-powermetrics", daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        buffer = b""
        for chunk in iter(lambda: self.process.stdout.read1(65536), b""):
            buffer += chunk
            *samples, buffer = buffer.split(b"\0")
            for raw in samples:
                if raw.strip():
                    self._absorb(raw)

    def _absorb(self, raw: bytes) -> None:
        try:
            energy, power, pressure = parse_powermetrics_sample(raw)
        except (plistlib.InvalidFileException, ValueError, AttributeError):
            return
        with self._lock:
            if energy is not None:
                self._energy = (self._energy or 0.0) + energy
            self._power, self._pressure = power, pressure

    def read(self) -> Reading:
        with self._lock:
            pressure = self._pressure
            reasons = (f"thermal_pressure:{pressure}",) if pressure not in (None, "Nominal") else ()
            return Reading(time=self.clock(), energy_joules=self._energy, power_watts=self._power, throttle_reasons=reasons)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reader.join(timeout=5)


class IOReportSensor(Sensor):
    """Cumulative IOReport energy through `zeus_apple_silicon` (no root needed)."""

    name = "ioreport"

    def __init__(self, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        try:
            from zeus_apple_silicon import AppleEnergyMonitor
        except ImportError:
            raise SensorUnavailable("IOReport: zeus-apple-silicon is not installed (pip install zeus-apple-silicon)") from None
        self.monitor = AppleEnergyMonitor()
        self.start_mj = self._total_mj()
        if self.start_mj is None:
            raise SensorUnavailable("IOReport: no energy channel reported")

    def _total_mj(self) -> float | None:
        metrics = self.monitor.get_cumulative_energy()
        parts = [getattr(metrics, f, None) for f in IOREPORT_FIELDS]
        parts = [p for p in parts if p is not None]
        return float(sum(parts)) if parts else None

    def read(self) -> Reading:
        t = self.clock()
        total = self._total_mj()
        return Reading(time=t, energy_joules=None if total is None else (total - self.start_mj) / 1000.0)


def open_apple(clock: Clock = time.monotonic) -> Sensor:
    """powermetrics if root, else IOReport; SensorUnavailable with both reasons otherwise."""
    reasons = []
    for make in (PowermetricsSensor, IOReportSensor):
        try:
            return make(clock=clock)
        except SensorUnavailable as e:
            reasons.append(str(e))
    raise SensorUnavailable("; ".join(reasons))
