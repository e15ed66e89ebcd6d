"""bench.scu_overhead end to end on the test base, and where the benchmarks read the shared data from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_module(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", **(env or {})})


def test_overhead_bench_times_both_arms_and_the_pi_update_under_the_default_smoothing(tiny_base, tmp_path):
    # the PI-update timing raised under `smoothing: data` (the default) until it passed the step's parts
    out = tmp_path / "overhead.json"
    proc = run_module(["-m", "bench.scu_overhead", "--base", "test", "--steps", "3", "--warmup", "1",
                       "--batch-size", "2", "--block-size", "32", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["steps"] == 3
    assert result["median_step_s_on"] > 0 and result["median_step_s_off"] > 0
    assert result["pi_update_s"] > 0 and 0 < result["direct_cost_fraction"] < 1


def test_benchmarks_read_the_shared_data_from_scu_data_dir_when_set(tmp_path, monkeypatch):
    code = "from bench.scu_vs_baselines import DEFAULT_DATA; print(DEFAULT_DATA)"
    assert run_module(["-c", code], {"SCU_DATA_DIR": str(tmp_path)}).stdout.strip() == str(tmp_path.resolve())
    monkeypatch.delenv("SCU_DATA_DIR", raising=False)
    assert run_module(["-c", code]).stdout.strip() == str((REPO.parent / "shared" / "data").resolve())
