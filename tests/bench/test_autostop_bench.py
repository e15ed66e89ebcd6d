"""bench.autostop: how a run is judged (cost against the run's own best, on the weights auto-stop saves), and the
quick scale end to end with a detector that must fire."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.autostop import fitted_slope_per_100, goals_of, judge, main, plan, slope_per_100

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def run(auto: dict | None) -> dict:
    curve = [{"step": 100, "test": 6.0, "val": 5.9}, {"step": 200, "test": 5.0, "val": 4.9},
             {"step": 300, "test": 5.2, "val": 5.1}, {"step": 400, "test": 5.4, "val": 5.3}]
    return {"arm": "a", "seed": 0, "size": "16000", "tokens_per_epoch": 16000, "curve": curve, "final": {"test": 5.4},
            "auto_stop": auto, "early_stop": {"stop_step": 350, "best_val_step": 200, "test": 5.0, "triggered": True}}


def test_cost_is_the_saved_adapters_held_out_bpt_against_the_runs_best_checkpoint():
    r = judge(run({"step": 250, "test": 5.1, "averaged": {"test": 5.05}}), budget=400)
    a = r["auto"]
    assert r["best_step"] == 200 and r["best_test"] == 5.0
    assert a["averaged"] and a["saved"] == pytest.approx(1 - 250 / 400)
    assert a["cost"] == pytest.approx(0.01) and a["last_step_cost"] == pytest.approx(0.02)  # 5.05 and 5.1 against 5.0
    assert a["heldout_slope_per_100"] == pytest.approx(0.04)  # 5.0 -> 5.2 between steps 200 and 300
    e = r["early_stop"]
    assert e["stop_step"] == 350 and e["cost"] == 0.0 and e["saved"] == pytest.approx(50 / 400)


def test_a_run_measured_before_averaging_is_judged_on_its_last_step_and_says_so():
    a = judge(run({"step": 250, "test": 5.1}), budget=400)["auto"]
    assert not a["averaged"] and a["cost"] == pytest.approx(0.02) == pytest.approx(a["last_step_cost"])
    assert judge(run(None), budget=400)["auto"] is None
    assert slope_per_100([{"step": 100, "test": 6.0}], 50) is None  # no evaluation before the step


def test_the_fitted_slope_reads_the_trend_of_the_evaluations_near_the_stop_not_one_evaluations_noise():
    """A flat curve with one low evaluation: the two evaluations around the stop read a fall of 4% per 100 steps,
    the least-squares slope over the evaluations within 50 steps reads about none, with its standard error."""
    bpt = {0: 5.0, 25: 5.0, 50: 5.0, 75: 5.0, 100: 4.95, 125: 5.0, 150: 5.0, 175: 5.0}
    curve = [{"step": k, "test": v} for k, v in bpt.items()]
    assert slope_per_100(curve, 90) == pytest.approx(-0.04)  # 5.0 -> 4.95 over 25 steps
    slope, stderr = fitted_slope_per_100(curve, 90)  # the evaluations at 50, 75, 100, 125
    xs, ys = [50, 75, 100, 125], [5.0, 5.0, 4.95, 5.0]
    mx, my = sum(xs) / 4, sum(ys) / 4
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert slope == pytest.approx(100 * b / (my + b * (90 - mx)))
    assert abs(slope) < 0.005 < abs(slope_per_100(curve, 90)) and stderr > 0
    line = [{"step": k, "test": 5.0 - 0.001 * k} for k in range(0, 200, 25)]  # falls 0.1 per 100 steps, exactly
    slope, stderr = fitted_slope_per_100(line, 100)
    assert slope == pytest.approx(-0.1 / 4.9) and stderr == pytest.approx(0.0, abs=1e-9)
    assert fitted_slope_per_100(line[:2], 10) is None  # fewer than 3 evaluations in the window


def test_the_data_rich_goal_is_judged_on_the_fitted_slope():
    curve = [{"step": 100 + 25 * i, "test": 5.0 - 0.01 * i} for i in range(8)]  # falls 0.04 per 100 steps: 0.8%
    r = {"arm": "a", "seed": 0, "size": "72000", "tokens_per_epoch": 72000, "curve": curve, "final": {"test": 4.93},
         "auto_stop": {"step": 190, "test": 4.97}, "early_stop": None}
    a = judge(r, budget=300)["auto"]
    assert a["heldout_fitted_slope_per_100"][0] == pytest.approx(-0.04 / 4.964, rel=1e-3)


@pytest.mark.parametrize("fitted, two_point, silent", [((-0.006, 0.003), 0.01, False), ((-0.004, 0.003), -0.02, True), (None, -0.02, True)])
def test_the_data_rich_goal_reads_the_fitted_slope_not_the_two_point_difference(fitted, two_point, silent):
    main_row = {"arm": "a", "auto": {"saved": 0.4, "cost": 0.001}}
    rich_row = {"arm": "N=72000/a", "auto": {"saved": 0.5, "cost": 0.0, "heldout_fitted_slope_per_100": fitted,
                                              "heldout_slope_per_100": two_point}}
    goals = goals_of([main_row, rich_row])
    assert goals["rich_silent_while_falling"] is silent and goals["fires_every_seed"] and goals["saves_30pct"]
    assert goals_of([main_row, {"arm": "N=72000/a", "auto": None}])["rich_silent_while_falling"] is True
    assert goals_of([main_row])["rich_silent_while_falling"] is None  # no data-rich run: not judged
    rich_only = goals_of([{"arm": "N=72000/a", "auto": None}])  # --seeds 0: the main size's goals are not judged
    assert [rich_only[k] for k in ("fires_every_seed", "saves_30pct", "cost_1pct")] == [None, None, None]


def test_first_seed_plans_new_seeds_at_the_main_size_and_keeps_seed_0_for_the_data_rich_run():
    jobs = plan("real", "18000", "72000", range(2, 5), None)
    assert [(j.size, j.seed) for j in jobs] == [("18000", 2), ("18000", 3), ("18000", 4), ("72000", 0)]
    assert all(j.config == {"scu": {"enabled": True}} for j in jobs)  # real: the product's default S*
    rich = plan("real", "18000", "72000", range(1), None, rich_seeds=range(3))
    assert [(j.size, j.seed) for j in rich] == [("18000", 0), ("72000", 0), ("72000", 1), ("72000", 2)]
    assert rich[1].key == jobs[-1].key  # the data-rich seed 0 keeps its cache
    fresh = plan("real", "18000", "72000", range(0), None, rich_seeds=range(3, 5))  # --seeds 0 --first-rich-seed 3
    assert [(j.size, j.seed) for j in fresh] == [("72000", 3), ("72000", 4)]


@pytest.mark.skipif(not (DATA / "shakespeare" / "input.txt").exists(), reason="needs the shared data folder")
def test_quick_scale_end_to_end_measures_where_the_detector_fires(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    always = ["window=20", "lambda_tolerance=1e9", "s_tolerance=1e9", "loss_tolerance=1e9", "min_epochs=0"]  # fires once its window is full
    assert main(["--scale", "quick", "--seeds", "1", "--jobs", "1", "--budget", "4", "--out", str(tmp_path),
                 "--equilibrium", *always]) == 0
    summary = json.loads((tmp_path / "results.json").read_text())
    summary_runs, goals = json.loads(json.dumps(summary["runs"])), summary["goals"]
    assert summary["budget_steps"] == 64 and {r["size"] for r in summary["runs"]} == {"3000", "12000"}
    for r in summary["runs"]:
        assert len(r["curve"]) == 8 and r["early_stop"] is not None
        a = r["auto"]
        assert a["step"] == 20 and a["averaged"] and a["saved"] == pytest.approx(1 - 20 / 64)
        assert a["test"] != a["last_step_test"]  # the averaged weights were measured, not the last step's again
    assert (tmp_path / "results.md").read_text().startswith("# Auto-stop against validation early stopping")
    assert (tmp_path / "autostop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --reread judges the folder again from its run files, without training: an old summary gets today's reading
    for r in summary["runs"]:
        del r["auto"]["heldout_fitted_slope_per_100"]
    (tmp_path / "results.json").write_text(json.dumps({**summary, "goals": {}}))
    assert main(["--reread", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["runs"] == summary_runs and again["goals"] == goals and again["settings"] == summary["settings"]


@pytest.mark.skipif(not (DATA / "shakespeare" / "input.txt").exists(), reason="needs the shared data folder")
def test_auto_arm_takes_its_sigma_from_the_plain_fit_of_the_same_seed_and_size(tmp_path, monkeypatch):
    """--auto runs each plain fit first and trains the arm at lambda 1 under sqrt(||dW_plain||^2 / p)."""
    import math

    from bench.prior_fit import lora_dof

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["--scale", "quick", "--auto", "--seeds", "1", "--jobs", "1", "--budget", "1", "--out", str(tmp_path)]) == 0
    runs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/seed0.json")}
    assert set(runs) == {"plain_fit", "N=12000_plain_fit", "scu_auto_fit", "N=12000_scu_auto_fit"}
    dof = lora_dof(runs["scu_auto_fit"]["config"]["model"]["base_model"], runs["scu_auto_fit"]["config"]["lora"]["rank"])
    for prefix in ("", "N=12000_"):
        plain, fit = runs[prefix + "plain_fit"], runs[prefix + "scu_auto_fit"]
        assert fit["config"]["scu"]["lambda_min"] == fit["config"]["scu"]["lambda_max"] == 1.0
        assert fit["prior_sigma"] == pytest.approx(plain["final"]["dw_norm"] / math.sqrt(dof), rel=1e-5)
        assert plain["prior_sigma"] is None  # SCU off in the plain fit


def test_a_named_setting_trains_on_top_of_the_target_and_names_the_arm():
    jobs = plan("cpu", "16000", "100000", range(1), None, ("dec", {"penalty_step": "decoupled", "kp": 1}))
    assert [j.arm for j in jobs] == ["scu_headline_dec", "N=100000/scu_headline_dec"]
    assert all(j.config["scu"] == {"enabled": True, "target_s": 0.875, "penalty_step": "decoupled", "kp": 1} for j in jobs)


@pytest.mark.parametrize("argv, says", [
    (["--set", "kp=1"], "--set and --name go together"),
    (["--name", "dec"], "--set and --name go together"),
    (["--name", "a/b", "--set", "kp=1"], "names a folder"),
    (["--name", "dec", "--set", "kp=1", "--auto"], "drop --set"),
    (["--name", "dec", "--set", "penalty_step=bogus"], "penalty_step"),
    (["--reread", "nowhere"], "results.json"),
])
def test_bad_settings_stop_before_any_work(argv, says, tmp_path):
    with pytest.raises(SystemExit, match=says):
        main(["--scale", "quick", "--out", str(tmp_path), *argv])
    assert not any(tmp_path.iterdir())


def test_replaying_a_cached_run_finds_the_min_epochs_step_and_the_held_out_slope_there():
    """A run whose every window holds (λ fixed at its target's level, S on target, flat loss): the detector fires at
    the first full window past min_epochs, and the held-out slope read there is the curve's own (-1% per 100 steps)."""
    from bench.autostop_signals import replay_run

    per_step = 2 * 16
    rows = [{"step": i, "data_bpt": 9.0, "param_bpt": 1.0, "lambda": 0.5, "lr": 1e-3} for i in range(1, 201)]
    curve = [{"step": s, "test": 6.0 * (1 - 0.0001 * s)} for s in range(10, 201, 10)]
    run = {"steps": 200, "rows": rows, "curve": curve, "tokens_per_epoch": 60 * per_step,
           "config": {"scu": {"target_s": 0.1}, "training": {"batch_size": 2, "block_size": 16}}}
    early = replay_run(run, 20, min_epochs=0.5)
    assert early["fired_at"] == 30  # 0.5 x 60 steps
    late = replay_run(run, 20, min_epochs=1.5)
    assert late["fired_at"] == 90
    slope, stderr = late["heldout_fitted_slope"]
    assert slope == pytest.approx(-0.0001 * 100 / (1 - 0.0001 * 90), rel=1e-6) and stderr < 1e-9
    assert replay_run(run, 20, min_epochs=4.0)["heldout_fitted_slope"] is None  # never fires: nothing to read


def test_the_saved_adapter_is_the_average_the_runs_config_names_and_both_are_reported():
    auto = {"step": 250, "test": 5.1, "averaged": {"test": 5.15}, "averaged_judged": {"test": 5.05}}
    judged = judge(run(auto) | {"config": {"equilibrium": {"average_from": "judged"}}}, budget=400)["auto"]
    assert judged["average_from"] == "judged" and judged["cost"] == pytest.approx(0.01)  # 5.05 against 5.0
    assert judged["start_average_cost"] == pytest.approx(0.03) and judged["judged_average_cost"] == pytest.approx(0.01)
    start = judge(run(auto), budget=400)["auto"]  # no config: a run from before the option, the EMA from the start
    assert start["average_from"] == "start" and start["cost"] == pytest.approx(0.03)
