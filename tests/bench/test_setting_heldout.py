"""bench.setting_heldout: the arm's jobs, item 2's verdict on a named arm, and the refusals before any work."""

import pytest

from bench.prior_fit import verdict
from bench.setting_heldout import main, missing_plain_jobs, setting_jobs


def arm(size: str, test: float, val: float, forgetting: float, std: float = 0.001) -> dict:
    stat = lambda x: {"mean": x, "std": std, "n": 2}  # noqa: E731
    return {"size": size, "test": stat(test), "val": stat(val), "forgetting": stat(forgetting)}


def test_jobs_cover_both_sizes_with_the_settings():
    jobs = setting_jobs("dec", {"penalty_step": "decoupled"}, ["18000", "72000"], range(2), range(2))
    assert [(j.key, j.size, j.evals) for j in jobs] == [
        ("dec/seed0", "18000", "curve"), ("dec/seed1", "18000", "curve"), ("N=72000/dec/seed0", "72000", "final"),
        ("N=72000/dec/seed1", "72000", "final")]
    assert all(j.config == {"scu": {"enabled": True, "penalty_step": "decoupled"}} for j in jobs)


def test_on_the_tiny_scale_every_larger_size_gets_the_rich_seeds():
    jobs = setting_jobs("dflt", {}, ["16000", "100000", "pool"], range(1), range(2))
    assert [(j.key, j.evals) for j in jobs] == [("dflt/seed0", "curve"), ("N=100000/dflt/seed0", "final"),
                                                ("N=100000/dflt/seed1", "final"), ("N=pool/dflt/seed0", "final"),
                                                ("N=pool/dflt/seed1", "final")]


def test_plain_lora_is_run_for_the_larger_sizes_seeds_the_harness_lacks():
    jobs = missing_plain_jobs(["18000", "72000"], plain_seeds=2, rich_seeds=4)
    assert [(j.key, j.config, j.evals) for j in jobs] == [("N=72000/unregularized/seed2", {}, "final"),
                                                          ("N=72000/unregularized/seed3", {}, "final")]
    assert missing_plain_jobs(["18000", "72000"], plain_seeds=2, rich_seeds=2) == []


def test_verdict_reads_the_named_arm_against_the_best_tuned_one():
    arms = {"unregularized": arm("18000", 5.90, 5.66, 0.60), "early_stopping": arm("18000", 5.72, 5.60, 0.10),
            "fixed_lambda=1": arm("18000", 5.66, 5.45, 0.12), "fixed_lambda=10": arm("18000", 5.92, 5.40, -0.1),
            "dec": arm("18000", 5.70, 5.50, 0.20), "far": arm("18000", 5.80, 5.50, 0.40)}
    # fixed λ 10 has the best validation BPT of its family, so it stands for the grid; early stopping is then best
    v = verdict(arms, "18000", "18000", "dec")
    assert v["best_tuned"] == "early_stopping" and v["held_out_met"] and v["forgetting_met"]
    assert v["rel_diff"] == pytest.approx(5.70 / 5.72 - 1)
    far = verdict(arms, "18000", "18000", "far")
    assert not far["held_out_met"] and not far["forgetting_met"]  # +1.4% > 1%; 0.40 / 0.60 > 1/2
    assert verdict(arms, "18000", "18000", "missing") is None


@pytest.mark.parametrize("argv, message", [
    (["--name", "scu_defaults", "--set", "kp=1"], "mix with the harness's own arms"),
    (["--name", "dec", "--set", "penalty_step=bogus"], "penalty_step"),
    (["--scale", "cpu", "--name", "prior_fit", "--set", "kp=1"], "mix with the harness's own arms"),
])
def test_bad_arguments_stop_before_any_work(argv, message, monkeypatch):
    monkeypatch.setattr("bench.setting_heldout.prepare_real", lambda *a: pytest.fail("work started"))
    monkeypatch.setattr("bench.setting_heldout.prepare_scale", lambda *a: pytest.fail("work started"))
    with pytest.raises(SystemExit, match=message):
        main(argv)
