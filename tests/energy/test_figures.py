"""`scu plot` draws tscu.png for runs with T-SCU, and only for them."""

from __future__ import annotations

import json
from pathlib import Path

from scu.energy.figures import has_tscu
from scu.energy.runtime import TscuConfig
from scu.energy.simulate import replay_run
from scu.report.plots import load_run, plot_runs
from scu.report.records import MetricsLog


def fake_run(d: Path, steps: int) -> None:
    log = MetricsLog(d / "metrics.jsonl")
    for step in range(1, steps + 1):
        log.append({"step": step, "data_bpt": 3.0 - 0.01 * step, "param_bpt": 0.01, "s": 0.003, "s_hat": 0.003,
                    "lambda": 1.0, "target_s": 0.05, "at_bound": None, "lr": 1e-3})  # fmt: skip
    (d / "metadata.json").write_text(json.dumps({"config": {"tscu": {"power_budget_watts": 20.0, "max_temperature_celsius": 75.0}}}))


def test_tscu_png_for_a_thermal_run_with_its_figures_merged_by_step(tmp_path: Path):
    trace = tmp_path / "trace.csv"
    trace.write_text("time,watts,celsius\n0,12,50\n5,35,80\n10,12,60\n")
    run_dir = tmp_path / "thermal"
    rows = replay_run(trace, TscuConfig(enabled=True), 10.0, run_dir, 0.2, 1000, lambda step: 4.0 - 0.01 * step).tscu.rows
    plain = tmp_path / "plain"
    plain.mkdir()
    fake_run(plain, 5)

    thermal_run, plain_run = load_run(run_dir), load_run(plain)
    assert has_tscu(thermal_run) and not has_tscu(plain_run)
    steps, watts = thermal_run.series("power_watts")
    assert len(steps) == len(rows) and watts.max() > 30
    written = {p.name for p in plot_runs([thermal_run], tmp_path / "plots")}
    assert "tscu.png" in written and (tmp_path / "plots" / "tscu.png").stat().st_size > 10_000
    assert "tscu.png" not in {p.name for p in plot_runs([plain_run], tmp_path / "plain-plots")}
