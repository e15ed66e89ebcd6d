"""T-SCU in the PyTorch training loop: a run without sensors, and a replayed hot trace that pauses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scu.config.schema import build_config
from scu.energy import open_sensor
from scu.energy.runtime import ANALYSIS_FILE, METRICS_FILE
from scu.torch.loop import train


def config(tiny_base: Path, data: Path, steps: int, **tscu):
    return build_config(
        {
            "model": {"base_model": str(tiny_base)},
            "lora": {"rank": 4, "alpha": 8},
            "training": {"batch_size": 2, "block_size": 64, "steps": steps, "warmup_steps": 1},
            "data": {"train_data": str(data)},
            "tscu": {"enabled": True, **tscu},
        }
    )


def outputs(out: Path) -> tuple[list[dict], dict]:
    return json.loads((out / METRICS_FILE).read_text())["steps"], json.loads((out / ANALYSIS_FILE).read_text())


def test_run_without_sensors_completes_and_reports_unavailable(tiny_base, pydoc_txt, tmp_path):
    probe = open_sensor("auto")
    probe.close()
    if probe.name != "unavailable":
        pytest.skip(f"this machine has a {probe.name} sensor")
    out = tmp_path / "run"
    meta = train(config(tiny_base, pydoc_txt, 3), out, progress=False)
    assert meta["status"] == "completed" and meta["controllers"]["thermal"]["controller"]["factor"] == 1.0
    rows, analysis = outputs(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("power_watts", "temperature_celsius", "energy_joules", "bits_per_joule"):
        assert all(r[key] is None for r in rows), key
    assert all(r["control_factor"] == 1.0 and r["loss"] > 0 and r["learning_rate"] > 0 for r in rows)
    assert analysis["sensor"] == "unavailable" and "NVML" in analysis["sensor_detail"]["reason"]
    for key in ("avg_power_watts", "avg_temperature_celsius", "total_energy_joules", "bits_per_joule", "avg_landauer_efficiency"):
        assert analysis[key] is None, key


def test_replayed_hot_trace_pauses_training_until_it_cools(tiny_base, pydoc_txt, tmp_path):
    trace = tmp_path / "hot.csv"
    trace.write_text("time,watts,celsius\n0,40,90\n4,40,90\n4.5,12,60\n600,12,60\n")
    out = tmp_path / "run"
    cfg = config(tiny_base, pydoc_txt, 4, power_trace=str(trace), pause_poll_s=0.05, sample_period_s=0.02)
    meta = train(cfg, out, progress=False)
    assert meta["status"] == "completed"
    rows, analysis = outputs(out)
    assert analysis["sensor"] == "replay" and analysis["pause_events"] == 1
    assert rows[0]["temperature_celsius"] >= 85.0 and rows[0]["paused_s"] > 0
    assert all(r["temperature_celsius"] <= 70.0 for r in rows[1:])  # nothing trained before it cooled
    assert rows[0]["reasons"][0].startswith("thermal: pause") and rows[0]["reasons"][1].startswith("thermal: resumed")
    assert analysis["total_energy_joules"] > 0 and analysis["paused_s"] == pytest.approx(rows[0]["paused_s"])
