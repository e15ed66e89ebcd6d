"""T-SCU end to end on a replayed trace and without sensors, on a simulated clock.

The trace: 20 W budget, max 75 C (pause at 85 C, resume at 70 C).
  0-20 s   12 W, 50 C
  20-60 s  35 W plateau (over budget), 60 C
  60-100 s 12 W (room to recover)
  100-105 s thermal spike 60 -> 92 C
  105-140 s cooling 92 -> 55 C (crosses 70 C at 105 + 22 * 35 / 37 = 125.81 s)
  then     12 W, 55 C
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scu.config.schema import Config, ScuSection
from scu.core.bits import LN2
from scu.energy.base import Unavailable
from scu.energy.replay import ReplaySensor, Trace
from scu.energy.runtime import ANALYSIS_FILE, METRICS_FILE, EnergyMeter, TscuConfig
from scu.energy.simulate import SimClock, replay_run
from scu.session import ControlSession, StepResult

TRACE = "time,watts,celsius\n0,12,50\n20,12,60\n20.001,35,60\n60,35,60\n60.001,12,60\n100,12,60\n105,12,92\n140,12,55\n400,12,55\n"
COOLED_AT = 105 + 22 * 35 / 37
END = 220.0
COMPUTE_S = 0.2


@pytest.fixture
def replayed(tmp_path: Path):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    run = replay_run(trace, TscuConfig(enabled=True), END, tmp_path / "run", COMPUTE_S, 10_000, lambda step: 4.0 - 0.001 * step)
    return run, run.tscu.rows, tmp_path / "run", trace


def thermal_session(out: Path, sensor, clock: SimClock, cfg: TscuConfig | None = None) -> ControlSession:
    """T-SCU alone in a control session, on a simulated clock (as replay_run builds it)."""
    cfg = cfg or TscuConfig(enabled=True)
    meter = EnergyMeter(cfg, sensor, sleep=clock.sleep)
    return ControlSession(Config(scu=ScuSection(enabled=False), tscu=cfg), 10_000, out, meter=meter, sleep=clock.sleep)


def step(session: ControlSession, step: int, data_bpt: float = 4.0) -> dict:
    return session.step(StepResult(data_bpt * LN2 * 10, None, None, 10), 0.0, 1e-3, COMPUTE_S)


def test_factor_drops_below_one_while_over_budget(replayed):
    _, rows, _, _ = replayed
    before = [r for r in rows if r["t_end"] < 20]
    plateau = [r for r in rows if 22 <= r["t_end"] <= 60]
    assert all(r["control_factor"] == 1.0 for r in before)
    assert plateau and all(r["control_factor"] < 1.0 for r in plateau)
    assert all(r["power_watts"] == pytest.approx(35.0) for r in plateau if r["t_end"] - r["duration_s"] > 20.01)
    said = [reason for r in rows if 20 <= r["t_end"] <= 60 for reason in r["reasons"]]
    assert said == ["thermal: throttling to 0.57 (35.0 W over the 20 W budget)"]  # once, when it starts


def test_pause_above_hard_limit_and_resume_below_threshold(replayed):
    run, rows, _, _ = replayed
    paused = [r for r in rows if r["paused_s"] > 0]
    assert len(paused) == 1 and run.controllers["thermal"].pause_events == 1
    p = paused[0]
    assert p["temperature_celsius"] >= 85.0
    resumed_at = p["t_end"] + p["paused_s"]
    assert COOLED_AT <= resumed_at <= COOLED_AT + run.cfg.tscu.pause_poll_s  # polled once a second
    assert not [r for r in rows if p["t_end"] < r["t_end"] < resumed_at]  # no training while hot
    assert p["reasons"][0].startswith("thermal: pause at") and p["reasons"][1].startswith("thermal: resumed at 69.")
    assert all(r["temperature_celsius"] < 85.0 for r in rows if r is not p)


def test_factor_recovers_afterwards(replayed):
    _, rows, _, _ = replayed
    between = [r["control_factor"] for r in rows if 60 < r["t_end"] < 100]
    assert between == sorted(between) and between[-1] == 1.0  # back to full speed before the spike
    late = [r for r in rows if r["t_end"] > END - 40]
    assert late and all(r["control_factor"] == 1.0 for r in late)
    after_pause = [r["control_factor"] for r in rows if r["t_end"] > COOLED_AT]
    assert after_pause[0] < 1.0 and after_pause == sorted(after_pause)  # a monotone ramp back up


def test_outputs_account_for_every_joule_of_the_trace(replayed):
    run, rows, out, trace = replayed
    analysis = json.loads((out / ANALYSIS_FILE).read_text())
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["sensor"] == analysis["sensor"] == "replay"
    assert [r["step"] for r in metrics["steps"]] == list(range(1, len(rows) + 1))
    keys = {"loss", "power_watts", "temperature_celsius", "energy_joules", "control_factor", "learning_rate", "bits_per_joule"}
    assert keys <= set(metrics["steps"][0])
    end = rows[-1]["t_end"]
    assert analysis["total_energy_joules"] == pytest.approx(Trace.load(trace).at(end)[2], rel=1e-9)
    assert analysis["avg_power_watts"] == pytest.approx(analysis["total_energy_joules"] / end, rel=1e-9)
    assert analysis["paused_s"] == pytest.approx(rows[[r["paused_s"] > 0 for r in rows].index(True)]["paused_s"])
    # 40 s over budget, counted in whole steps: off by at most the steps that straddle 20 s and 60 s
    straddle = max(r["duration_s"] for r in rows if 18 < r["t_end"] < 66)
    assert abs(analysis["time_over_budget_s"] - 40.0) <= 2 * straddle
    assert analysis["throttle_events"] == 2 and analysis["pause_events"] == 1
    assert analysis["bits_per_joule"] > 0 and 0 < analysis["avg_landauer_efficiency"] < 1e-12


def test_resume_keeps_rows_up_to_the_checkpoint(replayed, tmp_path: Path):
    run, rows, out, trace = replayed
    state = run.state_dict()
    state["state"]["step"] = 100  # as if the checkpoint had been taken at step 100
    clock = SimClock()
    again = thermal_session(out, ReplaySensor(trace, clock=clock), clock)
    again.load_state_dict(state)
    again.start(background=False)
    assert [r["step"] for r in again.tscu.rows] == list(range(1, 101))
    assert again.tscu.pause_s == run.tscu.pause_s
    assert again.controllers["thermal"].state_dict() == run.controllers["thermal"].state_dict()


def test_no_sensor_reports_unavailable_with_null_figures(tmp_path: Path):
    clock = SimClock()
    run = thermal_session(tmp_path, Unavailable("no sensor here", clock=clock), clock)
    run.start(background=False)
    for i in range(1, 21):
        clock.sleep(COMPUTE_S)
        step(run, i, 4.0 - 0.01 * i)
    run.write_records("completed")
    rows = run.tscu.rows
    assert all(r["control_factor"] == 1.0 and r["paused_s"] == 0.0 for r in rows)
    for key in ("power_watts", "temperature_celsius", "energy_joules", "bits_per_joule", "landauer_efficiency"):
        assert all(r[key] is None for r in rows)
    a = json.loads((tmp_path / ANALYSIS_FILE).read_text())
    assert a["sensor"] == "unavailable" and a["sensor_detail"]["reason"] == "no sensor here"
    for key in ("avg_power_watts", "avg_temperature_celsius", "total_energy_joules", "bits_per_joule",
                "avg_landauer_efficiency", "time_over_budget_s"):  # fmt: skip
        assert a[key] is None, key
    assert a["throttle_events"] == 0 and a["pause_events"] == 0
    assert json.loads((tmp_path / "metadata.json").read_text())["controllers"]["thermal"]["factor"] == 1.0


def test_a_pause_that_never_cools_stops_the_run(tmp_path: Path):
    trace = tmp_path / "hot.csv"
    trace.write_text("time,watts,celsius\n0,10,90\n")
    clock = SimClock()
    run = thermal_session(tmp_path, ReplaySensor(trace, clock=clock), clock, TscuConfig(enabled=True, max_pause_s=30.0))
    run.start(background=False)
    clock.sleep(COMPUTE_S)
    row = step(run, 1)
    assert row["stop"] and "paused 30 s without cooling" in row["reasons"][-1]
    assert run.stop_status == "stopped by a controller"
    assert 30.0 <= run.tscu.pause_s <= 31.0
