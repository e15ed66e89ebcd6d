"""`python -m bench.scu_vs_baselines --quick` end to end: every arm runs, the report is written, a rerun resumes.

This checks that the harness works, not the goals: at the quick scale (16 steps, one seed) they are meaningless.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not (DATA / "shakespeare" / "input.txt").exists(), reason="needs the shared data folder")


def quick(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "bench.scu_vs_baselines", "--quick", "--jobs", "1", "--out", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_quick_run_writes_every_arm_and_resumes_from_its_cache(tmp_path):
    out = tmp_path / "quick"
    first = quick(out)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    arms = summary["arms"]
    expected = {
        "unregularized", "early_stopping", "weight_decay=0.1", "lora_dropout=0.1", "fixed_lambda=0",
        "fixed_lambda=0.01", "fixed_lambda=1", "scu_target=0.5x", "scu_target=1x", "scu_target=2x", "scu_auto_stop",
        "scu_gains=0.5x", "scu_gains=2x", "scu_data_switch", "overhead",
    }
    assert expected <= set(arms)
    for size in ("6000", "12000"):
        assert {f"N={size}/fixed_lambda=0.01", f"N={size}/fixed_lambda=1", f"N={size}/scu_target=1x"} <= set(arms)

    # the middle S* comes from the validation-best fixed λ, and the SCU arms were run at multiples of it
    assert summary["best_fixed_lambda"] in {"fixed_lambda=0.01", "fixed_lambda=1"}
    middle = summary["middle_target"]
    assert 0 < middle < 1
    odds = lambda s: s / (1 - s)  # noqa: E731  (the S* grid scales ParamBPT/DataBPT)
    assert odds(arms["scu_target=2x"]["target_s"]) == pytest.approx(2 * odds(middle), rel=0.01)
    assert odds(arms["scu_target=0.5x"]["target_s"]) == pytest.approx(0.5 * odds(middle), rel=0.01)

    # held-out sets are disjoint token arrays of the asked size; every arm has finite held-out numbers
    assert summary["data"]["sets"]["test"]["predicted_tokens"] >= 1_000
    for name, arm in arms.items():
        if "test_final" in arm:
            assert 0 < arm["test_final"]["mean"] < 20 and 0 < arm["wiki_final"]["mean"] < 20, name

    # λ = 0 with the penalty in the graph trains exactly like the unregularized arm
    assert arms["fixed_lambda=0"]["test_final"]["mean"] == pytest.approx(arms["unregularized"]["test_final"]["mean"], abs=1e-6)
    # a stronger fixed λ leaves a smaller learned change
    assert arms["fixed_lambda=1"]["dw_norm_final"]["mean"] < arms["fixed_lambda=0.01"]["dw_norm_final"]["mean"]

    assert "tracking" in arms["scu_target=1x"] and arms["scu_data_switch"]["switch"]["step"] == 8
    assert len(arms["early_stopping"]["per_seed"]) == 1 and len(arms["scu_auto_stop"]["per_seed"]) == 1
    assert 0 < arms["overhead"]["median_pair_ratio"] < 10
    assert set(summary["transfer"]["sizes"]) == {"3000", "6000", "12000"} and summary["transfer"]["complete"]
    goals = summary["goals"]
    assert len(goals) >= 20 and all(g["met"] in (True, False, None) and g["measured"] for g in goals)

    md = (out / "results.md").read_text()
    assert "## Goals" in md and "## S* transfer" in md
    for png in ("scu_traces.png", "heldout_bpt.png", "heldout_curves.png", "lambda_grid.png"):
        assert (out / png).stat().st_size > 10_000, png

    # a rerun finds every job in the cache and runs nothing
    second = quick(out)
    assert second.returncode == 0, second.stderr[-3000:]
    phases = [line for line in second.stdout.splitlines() if line.startswith("[phase")]
    assert phases and all(line.endswith(" 0 to run") for line in phases), second.stdout
    assert json.loads((out / "results.json").read_text())["arms"]["scu_target=1x"] == arms["scu_target=1x"]


def test_bad_data_dir_is_a_one_line_error_and_writes_nothing(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "bench.scu_vs_baselines", "--quick", "--data-dir", str(tmp_path / "nope"),
           "--out", str(tmp_path / "out")]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: missing data file(s)") and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
