"""The real scale's plan has the arms issue 17 asks for, within its 3 CPU-hour budget's shape."""

from __future__ import annotations

import math

from bench.harness.real import HEADLINE, plan_jobs

GUIDE = {"enabled": True, "target_s": 0.005}


def test_plan_has_two_seeds_for_headline_arms_a_three_decade_grid_and_a_data_rich_size():
    jobs = plan_jobs("18000", "72000", GUIDE, seeds=2)
    main = [j for j in jobs if j.size == "18000"]
    for arm in HEADLINE:
        assert sorted(j.seed for j in main if j.arm == arm) == [0, 1], arm
    lambdas = sorted(j.config["scu"]["lambda_init"] for j in main if j.arm.startswith("fixed_lambda="))
    assert len(lambdas) >= 4 and math.log10(lambdas[-1] / lambdas[0]) >= 3
    for j in main:
        if j.arm.startswith("fixed_lambda="):
            assert j.config["scu"]["lambda_min"] == j.config["scu"]["lambda_max"] == j.config["scu"]["lambda_init"]
    assert len([j for j in main if j.arm.startswith("lora_dropout=")]) >= 2
    assert [j.arm for j in main if j.early_stop] == ["unregularized", "unregularized"]
    assert next(j for j in main if j.arm == "scu_suggest").config["scu"] == GUIDE
    rich = [j for j in jobs if j.size == "72000"]
    assert {j.arm for j in rich} == {"N=72000/unregularized", "N=72000/scu_defaults"}
    assert all(j.evals == "final" and not j.early_stop for j in rich)
    assert len({j.key for j in jobs}) == len(jobs)  # one cache file per job
