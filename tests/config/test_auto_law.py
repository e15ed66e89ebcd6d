"""`scu.law: auto`: the measured balance set where the trainer can run it, the position-form PI elsewhere."""

from __future__ import annotations

import pytest
import yaml

from scu import ScuError
from scu.config.schema import AUTO_BALANCE, ScuSection, build_config, dump_config
from scu.core.pi import PIConfig
from scu.session import ControlSession, RunFacts, StepResult, pi_config


def test_auto_resolves_to_the_balance_set_where_the_balance_is_measured_and_to_pi_elsewhere():
    section = build_config({"scu": {"law": "auto", "target_s": 0.07}}).scu
    measured = section.resolved(measures_balance=True)
    assert {k: getattr(measured, k) for k in AUTO_BALANCE} == AUTO_BALANCE
    assert measured.target_s == 0.07  # what auto does not choose is kept
    other = section.resolved(measures_balance=False)
    assert other.law == "pi" and (other.kp, other.ki, other.penalty_step) == (ScuSection().kp, ScuSection().ki, "loss")
    explicit = build_config({"scu": {"law": "guide"}}).scu
    assert explicit.resolved(True) is explicit


@pytest.mark.parametrize("key, value", [("kp", 3.0), ("ki", 0.1), ("penalty_step", "decoupled"), ("settle_steps", 4),
                                        ("penalty_step_bound", 3.0), ("balance_floor", "start")])
def test_a_setting_auto_chooses_is_refused_when_set_by_hand(key, value):
    with pytest.raises(ScuError, match=f"scu.law: auto sets scu.{key} itself; drop it, or name a law"):
        build_config({"scu": {"law": "auto", key: value}})
    needs = {"penalty_step_bound": {"penalty_step": "decoupled"}, "balance_floor": {"feedforward": "growth"}}
    named = {"law": "balance", key: value, **needs.get(key, {})}
    assert getattr(build_config({"scu": named}).scu, key) == value  # named law: the user's own value


def test_auto_is_the_default_law():
    assert build_config({}).scu.law == "auto" and build_config({"scu": {"target_s": 0.1, "lambda_max": 5}}).scu.law == "auto"
    assert build_config({}).scu.resolved(measures_balance=True).penalty_step == "decoupled"  # what `scu train` runs


@pytest.mark.parametrize("scu", [{"kp": 3.0}, {"kp": ScuSection().kp}, {"smoothing": "ratio"}, {"penalty_step": "decoupled"},
                                 {"lambda_min": 0.5, "lambda_max": 0.5}, {"target_s": "auto"}])
def test_with_no_law_named_a_config_that_sets_what_auto_chooses_runs_pi_with_it(scu):
    """kp and its like, a fixed lambda or target_s auto mean what they were measured with: the PI, λ in the loss."""
    section = build_config({"scu": scu}).scu
    assert section.law == "pi"
    assert all(getattr(section, k) == v for k, v in scu.items() if k != "target_s")
    assert section.resolved(measures_balance=True) is section  # `scu train` runs it as written


def test_an_auto_config_written_out_in_full_reads_back():
    cfg = build_config({"scu": {"law": "auto"}})
    assert build_config(yaml.safe_load(dump_config(cfg))).scu == cfg.scu


def test_each_trainer_runs_the_law_auto_resolved_to_and_records_it():
    cfg = build_config({"scu": {"law": "auto", "target_s": 0.05}})
    elsewhere = ControlSession(cfg, 10_000, None, RunFacts("SCU loop API"))  # would refuse law balance
    assert elsewhere.cfg.scu.law == "pi" and elsewhere.controllers["pi"].config.law == "pi"
    elsewhere.step(StepResult(4100.0, 0.05, 1.0, 1000), elsewhere.lam, 1e-3, 0.1)
    loop = ControlSession(cfg, 10_000, None, RunFacts("scu train", measures_balance=True))
    got = loop.controllers["pi"].config
    assert (got.law, got.approach, got.tracking_alpha, got.settle_steps) == ("balance", "horizon", 0.1, 10)
    assert got.momentum == 0.0 != PIConfig.momentum  # the decoupled step: no momentum between lambda and the weights
    assert pi_config(build_config({"scu": AUTO_BALANCE})) == got
