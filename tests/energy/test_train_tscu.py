"""T-SCU in `scu train`: a run without sensors, a replayed hot trace that pauses it, the CLI flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scu import ScuError
from scu.cli import build_parser, main
from scu.config.schema import build_config
from scu.energy import open_sensor
from scu.energy.runtime import ANALYSIS_FILE, METRICS_FILE
from scu.torch.loop import train
from scu.torch.train_cli import config_from_args


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


def yaml_config(tmp_path: Path, tiny_base: Path, data: Path, **tscu) -> Path:
    path = tmp_path / "cfg.yaml"
    cfg = {
        "model": {"base_model": str(tiny_base)},
        "lora": {"rank": 4, "alpha": 8},
        "training": {"batch_size": 2, "block_size": 64, "steps": 3, "warmup_steps": 1},
        "data": {"train_data": str(data)},
    }
    if tscu:
        cfg["tscu"] = tscu
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_without_sensors_completes_and_reports_unavailable(tiny_base, pydoc_txt, tmp_path, capsys):
    probe = open_sensor("auto")
    probe.close()
    if probe.name != "unavailable":
        pytest.skip(f"this machine has a {probe.name} sensor")
    out = tmp_path / "run"
    cfg = yaml_config(tmp_path, tiny_base, pydoc_txt)
    assert main(["train", "--config", str(cfg), "--output", str(out), "--controller", "scu,thermal"]) == 0
    assert "T-SCU: no power/temperature sensor" in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["controllers"]["thermal"]["factor"] == 1.0
    assert meta["controllers"]["pi"]["step"] == 3  # composed with the PI loop
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


def test_cli_flags_compose_controllers_and_set_the_tscu_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {steps: 3}\n")

    def cfg(*flags):
        return config_from_args(build_parser().parse_args(["train", "--config", str(path), *flags]))

    c = cfg("--controller", "scu,thermal", "--power-budget", "15", "--max-temp", "80", "--power-trace", "t.csv")
    assert (c.scu.enabled, c.sscu.enabled, c.tscu.enabled) == (True, False, True)
    assert (c.tscu.power_budget_watts, c.tscu.max_temperature_celsius, c.tscu.power_trace) == (15.0, 80.0, "t.csv")
    assert (cfg("--controller", "thermal").scu.enabled, cfg("--controller", "thermal").tscu.enabled) == (False, True)
    assert cfg("--controller", "both").tscu.enabled is False
    with pytest.raises(ScuError, match="add --controller thermal"):
        cfg("--max-temp", "80")
    with pytest.raises(SystemExit):
        cfg("--controller", "scu,heat")


def test_replayed_trace_through_the_cli_throttles_and_says_so(tiny_base, pydoc_txt, tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("time,watts,celsius\n0,40,60\n600,40,60\n")
    cfg = yaml_config(tmp_path, tiny_base, pydoc_txt, control_frequency=50.0)
    out = tmp_path / "run"
    flags = ["--controller", "scu,thermal", "--power-budget", "15", "--max-temp", "80", "--power-trace", str(trace)]
    assert main(["train", "--config", str(cfg), "--output", str(out), *flags]) == 0
    assert "T-SCU [replay]" in capsys.readouterr().out
    rows, analysis = outputs(out)
    assert rows[-1]["control_factor"] < 1.0 and rows[-1]["power_watts"] == pytest.approx(40.0)
    assert analysis["throttle_events"] == 1 and analysis["time_over_budget_s"] > 0


def test_bad_trace_is_a_one_line_error_and_leaves_no_output(tiny_base, pydoc_txt, tmp_path, capsys):
    trace = tmp_path / "bad.csv"
    trace.write_text("time,watts\n0,-3\n")
    out = tmp_path / "run"
    cfg = yaml_config(tmp_path, tiny_base, pydoc_txt)
    code = main(["train", "--config", str(cfg), "--output", str(out), "--controller", "thermal", "--power-trace", str(trace)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "watts must be >= 0" in err
    assert not out.exists()
