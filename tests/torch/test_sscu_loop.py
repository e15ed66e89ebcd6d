"""S-SCU in the PyTorch loop: real training with actions applied, the three files, composition with lambda."""

from __future__ import annotations

import json

import pytest
import yaml

import scu.core.simplified as simplified
import scu.driver as driver
import scu.torch.loop as loop
from scu.cli import main
from scu.core.simplified import Rule, SimplifiedConfig
from scu.torch.train_cli import TEST_RUN_STEPS

FILES = ("scu_training_metrics.json", "scu_training_summary.json", "simple_training_config.json")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cli_test_run_trains_with_actions_applied_and_writes_the_three_files(make_cfg, tmp_path):
    cfg = make_cfg(training__block_size=32)
    data = cfg.model_dump(mode="json")
    # Thresholds that this tiny run crosses: every decision sees "slow" progress and, with spike_factor
    # just above 1, a "spike"; the spike rule tightens clipping once, then grows the batch.
    data["sscu"] = {"control_frequency": 10, "window": 10, "entropy_window": 32, "spike_factor": 1.001,
                    "clip_tighten": 0.5, "clip_factor_min": 0.5, "max_batch_factor": 2}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--output", str(out), "--controller", "simplified", "--test-run"]) == 0

    metrics, summary, settings = (json.loads((out / name).read_text()) for name in FILES)
    r = rows(out)
    assert len(r) == TEST_RUN_STEPS and summary["total_steps"] == TEST_RUN_STEPS
    actions = metrics["actions"]
    assert [a["step"] for a in actions] == list(range(10, 101, 10))
    assert actions[0]["action"] == "gradient_spikes" and actions[0]["grad_clip_factor"] == 0.5
    assert actions[1]["action"] == "gradient_spikes_clip_at_min" and actions[1]["batch_adjustment"] == 2.0
    for a in actions:
        assert {"step", "action", "reason", "lr_factor", "batch_adjustment", "grad_clip_factor", "reg_factor"} <= a.keys()
        assert a["reason"].startswith(f"SCU Step {a['step']}: ")
    # The loop applied the batch change from the next step on: twice the micro-batches, about twice the loss
    # targets (a document's first token is not one, so blocks differ by a few).
    by_step = {x["step"]: x for x in r}
    assert [by_step[s]["grad_accum"] for s in range(15, 25)] == [1] * 5 + [2] * 5  # a row holds the next step's value
    before = (by_step[20]["tokens"] - by_step[15]["tokens"]) / 5
    after = (by_step[25]["tokens"] - by_step[20]["tokens"]) / 5
    assert after / before == pytest.approx(2, rel=0.1)
    assert by_step[10]["reasons"] == [actions[0]["reason"]]
    # S-SCU ran alone: no lambda penalty, so its regularization had nothing to act on.
    assert summary["regularization_acts_on"] == "nothing" and settings["regularization_acts_on"] == "nothing"
    assert summary["final_lr"] == r[-1]["lr"] and summary["final_loss_bpt"] == r[-1]["data_bpt"]
    assert summary["multiscale_analysis_ran"] and summary["actions_applied"] >= 2
    assert summary["average_grad_norm"] == pytest.approx(sum(x["grad_norm"] for x in r) / len(r))
    assert settings["sscu"]["control_frequency"] == 10 and settings["training"]["steps"] == TEST_RUN_STEPS
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "completed" and not meta["scu_enabled"]


def always(effects):
    return (Rule("always", "Test situation", "test response", lambda s, c: True, effects),)


def test_lr_factor_multiplies_the_scheduled_lr(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(simplified, "RULES", always({"lr": "lr_increase"}))
    cfg = make_cfg(training__steps=12, training__lr_schedule="constant", training__warmup_steps=0)
    cfg.sscu = SimplifiedConfig(enabled=True, control_frequency=4, window=4, entropy_window=8, lr_increase=1.5)
    r = rows_of(loop.train(cfg, tmp_path / "run", progress=False), tmp_path / "run")
    base = cfg.training.learning_rate
    assert [x["lr"] / base for x in r] == pytest.approx([1.0] * 4 + [1.5] * 4 + [2.25] * 4)


def rows_of(meta, out):
    assert meta["status"] == "completed"
    return rows(out)


def test_regularization_moves_the_pi_target_and_the_pi_loop_holds_it(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(simplified, "RULES", always({"reg": "reg_increase"}))
    cfg = make_cfg(training__steps=16, scu__law="pi")
    alone = rows_of(loop.train(cfg, tmp_path / "pi", progress=False), tmp_path / "pi")
    cfg.sscu = SimplifiedConfig(enabled=True, control_frequency=4, window=4, entropy_window=8, reg_increase=2.0)
    both = rows_of(loop.train(cfg, tmp_path / "both", progress=False), tmp_path / "both")
    # reg_factor doubles at steps 4 and 8, then stays at reg_factor_max = 4: the PI updates of the following
    # steps aim at S*/2, then S*/4.
    assert [x["target_s"] for x in both[:13:4]] == pytest.approx([0.05, 0.025, 0.0125, 0.0125])
    assert [x["lambda"] for x in both[:4]] == [x["lambda"] for x in alone[:4]]  # identical until the first action
    # More regularization, and kept: never below the PI-only lambda, above it once off the lower bound.
    assert all(b["lambda"] >= a["lambda"] for a, b in zip(alone[4:], both[4:]))
    assert all(b["lambda"] > 2 * a["lambda"] for a, b in zip(alone[8:], both[8:]))
    assert json.loads((tmp_path / "both" / FILES[1]).read_text())["regularization_acts_on"] == "pi_target"


def test_regularization_scales_a_fixed_lambda(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(simplified, "RULES", always({"reg": "reg_increase"}))
    cfg = make_cfg(training__steps=8, scu__lambda_min=0.5, scu__lambda_max=0.5)
    cfg.sscu = SimplifiedConfig(enabled=True, control_frequency=4, window=4, entropy_window=8, reg_increase=2.0)
    r = rows_of(loop.train(cfg, tmp_path / "run", progress=False), tmp_path / "run")
    assert [x["lambda_used"] for x in r] == [0.5] * 4 + [1.0] * 4


def test_controller_flag_selects_the_controllers(tmp_path):
    from scu.cli import build_parser
    from scu.torch.train_cli import config_from_args

    path = tmp_path / "c.yaml"
    path.write_text("training: {steps: 7}\n")

    def cfg(*flags):
        return config_from_args(build_parser().parse_args(["train", "--config", str(path), *flags]))

    assert (cfg().scu.enabled, cfg().sscu.enabled, cfg().training.steps) == (True, False, 7)
    assert (cfg("--controller", "simplified").scu.enabled, cfg("--controller", "simplified").sscu.enabled) == (False, True)
    assert (cfg("--controller", "both").scu.enabled, cfg("--controller", "both").sscu.enabled) == (True, True)
    assert cfg("--test-run").training.steps == TEST_RUN_STEPS
    with pytest.raises(SystemExit):
        cfg("--test-run", "--steps", "5")


def test_resume_continues_the_sscu_decisions_exactly(make_cfg, tmp_path, monkeypatch):
    import os
    import signal

    cfg = make_cfg(training__steps=30, scu__enabled=False)
    cfg.sscu = SimplifiedConfig(enabled=True, control_frequency=5, window=5, entropy_window=16, target_loss_improvement=0.5)
    loop.train(cfg, tmp_path / "full", progress=False)

    real_record = driver.record_step

    def interrupt_at_step_13(run, *a, **k):
        row = real_record(run, *a, **k)
        if run.state.step == 13:
            os.kill(os.getpid(), signal.SIGINT)
        return row

    monkeypatch.setattr(driver, "record_step", interrupt_at_step_13)
    assert loop.train(cfg, tmp_path / "cut", progress=False)["status"] == "interrupted"
    monkeypatch.setattr(driver, "record_step", real_record)
    loop.train(cfg, tmp_path / "cut", resume=True, progress=False)
    full, cut = (json.loads((tmp_path / d / FILES[0]).read_text())["actions"] for d in ("full", "cut"))
    assert len(full) >= 3 and cut == full
    assert [x["lr"] for x in rows(tmp_path / "cut")] == [x["lr"] for x in rows(tmp_path / "full")]


def test_regularization_moves_the_target_that_the_default_law_auto_then_tracks(make_cfg, tmp_path, monkeypatch):
    """S-SCU on top of `law: auto` (the balance set under `scu train`): the lowered S* reaches the law, and lambda,
    at its floor while S rises towards S* 1%, leaves the floor once S passes the lowered target."""
    monkeypatch.setattr(simplified, "RULES", always({"reg": "reg_increase"}))
    cfg = make_cfg(training__steps=16, scu__target_s=0.01)
    assert cfg.scu.law == "auto"
    alone = rows_of(loop.train(cfg, tmp_path / "auto", progress=False), tmp_path / "auto")
    cfg.sscu = SimplifiedConfig(enabled=True, control_frequency=4, window=4, entropy_window=8, reg_increase=2.0)
    both = rows_of(loop.train(cfg, tmp_path / "both", progress=False), tmp_path / "both")
    assert [x["target_s"] for x in both[:13:4]] == pytest.approx([0.01, 0.005, 0.0025, 0.0025])
    assert [x["lambda"] for x in both[:4]] == [x["lambda"] for x in alone[:4]]  # identical until the first action
    assert all(a["lambda"] == cfg.scu.lambda_min for a in alone)  # S stays under 1% in 16 steps: nothing to hold
    assert all(b["lambda"] >= a["lambda"] for a, b in zip(alone, both))
    assert both[-1]["lambda"] > 10 * cfg.scu.lambda_min and both[-1]["s_hat"] > 0.0025
