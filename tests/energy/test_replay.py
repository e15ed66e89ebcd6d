"""The CSV replay source: parsing, interpolation, exact energy, and refusal of bad traces."""

from pathlib import Path

import pytest

from scu import ScuError
from scu.energy import open_sensor
from scu.energy.replay import ReplaySensor, Trace


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "trace.csv"
    p.write_text(text)
    return p


def test_interpolates_and_integrates_exactly(tmp_path: Path):
    path = write(tmp_path, "time,watts,celsius\n10,10,40\n12,30,60\n14,30,60\n")
    now = [100.0]
    s = ReplaySensor(path, clock=lambda: now[0])
    r = s.read()
    assert (r.power_watts, r.temperature_celsius, r.energy_joules) == (10.0, 40.0, 0.0)
    now[0] = 101.0  # halfway up the ramp
    r = s.read()
    assert (r.power_watts, r.temperature_celsius) == (20.0, 50.0)
    assert r.energy_joules == pytest.approx(15.0)  # trapezoid 10 W -> 20 W over 1 s
    now[0] = 104.0
    assert s.read().energy_joules == pytest.approx(40.0 + 60.0)
    now[0] = 106.0  # past the end: the last values hold
    r = s.read()
    assert r.power_watts == 30.0 and r.energy_joules == pytest.approx(160.0)


def test_speed_and_header_aliases_and_missing_column(tmp_path: Path):
    path = write(tmp_path, "time_s,temperature_celsius\n0,30\n10,80\n")
    now = [0.0]
    s = ReplaySensor(path, speed=5.0, clock=lambda: now[0])
    now[0] = 1.0  # 5 s into the trace
    r = s.read()
    assert r.temperature_celsius == 55.0 and r.power_watts is None and r.energy_joules is None


@pytest.mark.parametrize(
    "text,match",
    [
        ("time,watts\n", "at least one data row"),
        ("when,watts\n0,1\n", "needs a time column"),
        ("time,watts\n0,1\n0,2\n", "increase strictly"),
        ("time,watts\n0,abc\n", "not a number"),
        ("time,watts\n0,-5\n", ">= 0"),
        ("time,watts,celsius\n0,5\n", "not a number"),
    ],
)
def test_bad_traces_are_user_errors(tmp_path: Path, text: str, match: str):
    with pytest.raises(ScuError, match=match):
        Trace.load(write(tmp_path, text))


def test_open_sensor_replays_a_trace_and_refuses_conflicts(tmp_path: Path):
    path = write(tmp_path, "time,watts,celsius\n0,5,30\n")
    assert open_sensor("auto", trace=path).name == "replay"
    with pytest.raises(ScuError, match="replaces the sensor"):
        open_sensor("nvml", trace=path)
    with pytest.raises(ScuError, match="needs a trace"):
        open_sensor("replay")
    with pytest.raises(ScuError, match="not found"):
        open_sensor("replay", trace=tmp_path / "absent.csv")
