"""The control session without a framework: Action merging, and resuming a checkpoint written before the
session held λ."""

from __future__ import annotations

import pytest

from scu.config.schema import build_config
from scu.core.telemetry import Action, merge
from scu import ScuError
from scu.session import ControlSession, RunFacts, StepResult


def test_merge_multiplies_factors_adds_pacing_and_keeps_the_coolest_pause():
    a = merge([Action(lam=1.0, lr_factor=2.0, sleep_s=0.1, pause_until_celsius=70.0, report={"x": 1}),
               Action(lam=2.0, target_s=0.1, lr_factor=0.5, sleep_s=0.2, pause_until_celsius=65.0, stop=True)])
    assert (a.lam, a.target_s, a.lr_factor, a.pause_until_celsius, a.stop) == (2.0, 0.1, 1.0, 65.0, True)
    assert a.sleep_s == pytest.approx(0.3)
    assert a.report == {"x": 1}


def test_a_checkpoint_without_the_session_lambda_resumes_at_the_pi_lambda():
    cfg = build_config({"scu": {"target_s": 0.1}})
    before = ControlSession(cfg, 10_000)
    for nats in (4100.0, 3900.0, 3800.0):
        before.step(StepResult(nats, 0.05, 1.0, 1000), before.lam, 1e-3, 0.1)
    saved = before.state_dict()
    del saved["state"]["lam"], saved["state"]["target_s"]  # what scu wrote before issue 19
    after = ControlSession(cfg, 10_000)
    after.load_state_dict(saved)
    assert after.lam == before.lam and after.state.step == 3 and after.target_s == 0.1


def test_balance_law_is_refused_where_the_trainer_does_not_measure_the_balance():
    cfg = build_config({"model": {"base_model": "x"}, "data": {"train_data": "x"}, "scu": {"law": "balance"}})
    with pytest.raises(ScuError, match="use scu.law: pi"):
        ControlSession(cfg, 1000, None, RunFacts("SCUTrainer"))
    ControlSession(cfg, 1000, None, RunFacts("scu train", measures_balance=True))  # both `scu train` loops report it


def test_every_controller_setting_of_the_scu_section_reaches_the_pi_controller():
    from dataclasses import fields

    from scu.core.pi import PIConfig
    from scu.session import pi_config

    chosen = {"law": "balance", "target_s": 0.07, "kp": 0.0, "ki": 0.02, "deadband": 0.001, "lambda_init": 0.3,
              "lambda_min": 1e-5, "lambda_max": 50.0, "ema_alpha": 0.2, "smoothing": "data", "lead_steps": 2.0,
              "tracking_alpha": 0.05, "balance_margin": 1.1, "feedforward": "growth", "growth_alpha": 0.4,
              "approach": "horizon", "horizon_steps": 6.0, "horizon_memory": "deficit",
              "horizon_kp_reads": "heading", "start_band": 0.2, "horizon_plant": "restoring", "restoring_exponent": 0.7,
              "settle_steps": 4, "balance_floor": "tracking"}
    got = pi_config(build_config({"scu": chosen}))
    assert {k: getattr(got, k) for k in chosen} == chosen
    # what the scu section does not expose keeps PIConfig's default (laws kept for comparison, AdamW's beta1)
    left = {f.name for f in fields(PIConfig)} - set(chosen)
    assert left == {"integral_error_clip", "error_clip", "start_horizon", "start_gain", "schedule_gain", "momentum",
                    "leak", "integral_limit"}


@pytest.mark.parametrize("clash, fix", [({"balance_floor": "start"}, "set feedforward 'growth'"),
                                        ({"approach": "horizon", "smoothing": "ratio"}, "needs smoothing 'data'")])
def test_controller_settings_that_clash_are_a_one_line_error(clash, fix):
    cfg = build_config({"model": {"base_model": "x"}, "data": {"train_data": "x"}, "scu": {"law": "balance", **clash}})
    with pytest.raises(ScuError, match=fix):
        ControlSession(cfg, 10_000, None, RunFacts("scu train", measures_balance=True))


def test_the_balance_law_records_the_steps_penalty_sensitivity_in_its_metrics_row():
    cfg = build_config({"model": {"base_model": "x"}, "data": {"train_data": "x"},
                        "scu": {"law": "balance", "feedforward": "growth", "target_s": 0.1}})
    session = ControlSession(cfg, 10_000, None, RunFacts("scu train", measures_balance=True))
    row = session.step(StepResult(4000.0, 0.05, 1.0, 1000, 0.2, 1.0, 0.37), session.lam, 1e-3, 0.1)
    assert row["penalty_sensitivity"] == 0.37
    plain = ControlSession(build_config({"scu": {"target_s": 0.1}}), 10_000)
    assert "penalty_sensitivity" not in plain.step(StepResult(4000.0, 0.05, 1.0, 1000), plain.lam, 1e-3, 0.1)
