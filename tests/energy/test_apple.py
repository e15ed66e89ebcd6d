"""Apple Silicon sources, off a Mac: the powermetrics plist stream and the IOReport package."""

import plistlib
import sys
import time
import types

import pytest

from scu.energy.apple import IOReportSensor, PowermetricsSensor, open_apple, parse_powermetrics_sample
from scu.energy.base import SensorUnavailable


def sample(cpu_mj: int, gpu_mj: int, ane_mj: int, combined_mw: float, pressure: str) -> bytes:
    return plistlib.dumps(
        {
            "elapsed_ns": 100_000_000,
            "processor": {"cpu_energy": cpu_mj, "gpu_energy": gpu_mj, "ane_energy": ane_mj, "combined_power": combined_mw},
            "thermal_pressure": pressure,
        }
    )


def test_parse_one_powermetrics_sample():
    energy, power, pressure = parse_powermetrics_sample(sample(600, 300, 100, 9876.0, "Nominal") + b"\0")
    assert energy == pytest.approx(1.0) and power == pytest.approx(9.876) and pressure == "Nominal"


def test_powermetrics_stream_accumulates_energy_and_reports_pressure(tmp_path):
    stream = tmp_path / "stream.bin"
    stream.write_bytes(b"\0".join([sample(1000, 500, 0, 15000.0, "Nominal"), sample(2000, 0, 500, 25000.0, "Heavy")]) + b"\0")
    fake = [sys.executable, "-c", f"import sys; sys.stdout.buffer.write(open({str(stream)!r}, 'rb').read())"]
    s = PowermetricsSensor(command=fake)
    deadline = time.monotonic() + 10
    while s.read().energy_joules != pytest.approx(4.0) and time.monotonic() < deadline:
        time.sleep(0.01)
    r = s.read()
    s.close()
    assert r.energy_joules == pytest.approx(4.0) and r.power_watts == pytest.approx(25.0)
    assert r.temperature_celsius is None  # powermetrics has no degrees; nothing is invented
    assert r.throttle_reasons == ("thermal_pressure:Heavy",)


def test_ioreport_package_counts_from_open(monkeypatch):
    totals = {"cpu_total_mj": 1000, "gpu_mj": 200, "ane_mj": None, "dram_mj": 50}

    class Monitor:
        def get_cumulative_energy(self):
            return types.SimpleNamespace(**totals)

    monkeypatch.setitem(sys.modules, "zeus_apple_silicon", types.SimpleNamespace(AppleEnergyMonitor=Monitor))
    s = IOReportSensor()
    assert s.read().energy_joules == 0.0
    totals.update(cpu_total_mj=3000, gpu_mj=700)
    assert s.read().energy_joules == pytest.approx(2.5)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the non-macOS path")
def test_off_a_mac_without_the_package_apple_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "zeus_apple_silicon", None)  # import fails
    with pytest.raises(SensorUnavailable, match="not on macOS.*zeus-apple-silicon is not installed"):
        open_apple()
