"""bench.trainer_real: its reading of a run's rows reproduces the harness's own tracking numbers, and the report
sets the Trainer's runs beside `scu train`'s."""

import json

import pytest

from bench.trainer_real import SCU_TRAIN_RUNS, report, scu_train_runs, tracking_of


def test_tracking_of_reproduces_the_harness_record_of_the_same_run():
    path = SCU_TRAIN_RUNS / "seed0.json"
    if not path.exists():
        pytest.skip("the harness's cached run is not in this checkout")
    d = json.loads(path.read_text())
    mine = tracking_of(d["rows"])
    assert mine["in_band"] == pytest.approx(d["tracking"]["in_band"])
    assert mine["settling_step"] == d["tracking"]["settling_step"]
    assert mine["overshoot"] == pytest.approx(d["tracking"]["overshoot"], rel=1e-4)
    assert mine["mean_s_2nd_half"] == pytest.approx(d["mean_s_2nd_half"], rel=1e-4)


def test_report_lists_both_trainers():
    rows = [{"step": i + 1, "s": 0.05, "s_hat": 0.05, "lambda": 0.7, "at_bound": None} for i in range(20)]
    run = {"seed": 7, "final": {"test": 5.65, "wiki": 5.5}, "tracking": tracking_of(rows), "train_wall_s": 300.0}
    text = report([run], base_wiki=5.38)
    assert "| SCUTrainer | 7 | 100% |" in text and "+0.1200" in text
    assert ("| scu train (harness) |" in text) == bool(scu_train_runs())
