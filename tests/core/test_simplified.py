"""S-SCU: each rule fires on a stream built to trigger it, healthy streams trigger nothing, and the
wavelet entropy is what its definition says."""

import json
import math

import numpy as np
import pytest
import pywt

from scu.core.simplified import RULES, SimplifiedConfig, SimplifiedController, regularized_target, wavelet_entropy
from scu.core.telemetry import StepTelemetry

N = 50  # default window and control frequency: one decision per stream


def feed(ctrl, losses, grads, start=1):
    return [
        ctrl.step(StepTelemetry(step=start + i, data_bpt=float(l), param_bpt=0.0, tokens=1024, lr=1e-3, grad_norm=g))
        for i, (l, g) in enumerate(zip(losses, grads))
    ]


def trend(n, change, seed=0, noise=0.003, start=3.0):
    """Loss moving by `change` (relative, per window of N steps) with small white noise."""
    rng = np.random.default_rng(seed)
    return start * (1 + change) ** (np.arange(n) / (N - 1)) + noise * rng.standard_normal(n)


def stable_grads(n, seed=1):
    return list(1.0 + 0.05 * np.random.default_rng(seed).standard_normal(n))


def unstable_grads(n, seed=2):
    """CV about 0.8 without any norm above 3x the median: erratic, but no spike."""
    jitter = 0.02 * np.random.default_rng(seed).standard_normal(n)
    return list(np.where(np.arange(n) % 2 == 0, 0.2, 1.8) + jitter)


def only_decision(ctrl):
    assert len(ctrl.decisions) == 1, [d["reason"] for d in ctrl.decisions]
    return ctrl.decisions[0]


def test_healthy_progress_triggers_nothing():
    ctrl = SimplifiedController(SimplifiedConfig())
    actions = feed(ctrl, trend(6 * N, -0.05), stable_grads(6 * N))
    assert ctrl.checks == 6
    assert ctrl.decisions == []
    assert all(a.reasons == [] for a in actions)
    last = actions[-1]
    assert (last.lr_factor, last.reg_factor, last.grad_clip_factor, last.grad_accum) == (1.0, 1.0, 1.0, 1)


def test_slow_improvement_with_stable_gradients_raises_lr():
    ctrl = SimplifiedController(SimplifiedConfig())
    actions = feed(ctrl, trend(N, -0.004), stable_grads(N))
    d = only_decision(ctrl)
    assert d["action"] == "slow_stable"
    assert d["reason"].startswith("SCU Step 50: Slow loss improvement with stable gradients - increasing LR")
    assert d["lr_factor"] == pytest.approx(1.2)
    assert (d["reg_factor"], d["grad_clip_factor"], d["batch_adjustment"]) == (1.0, 1.0, 1.0)
    assert actions[-1].lr_factor == pytest.approx(1.2) and actions[-1].reasons == [d["reason"]]
    assert all(a.reasons == [] for a in actions[:-1])


def test_degradation_with_unstable_gradients_lowers_lr_and_strengthens_regularization():
    ctrl = SimplifiedController(SimplifiedConfig())
    feed(ctrl, trend(N, 0.03), unstable_grads(N))
    d = only_decision(ctrl)
    assert d["action"] == "degrading"
    assert d["signals"]["grad_cv"] > 0.6 and d["signals"]["spikes"] == 0
    assert "decreasing LR and strengthening regularization" in d["reason"]
    assert (d["lr_factor"], d["reg_factor"]) == (pytest.approx(0.7), pytest.approx(1.5))


def equal_energy_fluctuation(n, level, amplitude, seed=3):
    """A signal whose wavelet bands (approximation and every detail level) hold equal energy."""
    rng = np.random.default_rng(seed)
    sizes = [n >> level] + [n >> j for j in range(level, 0, -1)]
    coeffs = [rng.standard_normal(k) for k in sizes]
    coeffs = [c / np.linalg.norm(c) for c in coeffs]
    return amplitude * pywt.waverec(coeffs, "db4", mode="periodization")


def test_degradation_with_high_entropy_and_stable_gradients_lowers_lr():
    cfg = SimplifiedConfig(control_frequency=64, window=64, entropy_window=64)
    ctrl = SimplifiedController(cfg)
    losses = 3.0 * (1 + 0.03 * np.arange(64) / 63) + equal_energy_fluctuation(64, 3, 0.05)
    feed(ctrl, losses, stable_grads(64))
    d = only_decision(ctrl)
    assert d["action"] == "degrading"
    assert d["signals"]["entropy"] > cfg.entropy_high and d["signals"]["grad_cv"] < cfg.cv_stable
    assert d["reason"].startswith("SCU Step 64: Loss degrading with unstable gradients or high multi-scale entropy")


def test_gradient_spike_tightens_clipping():
    ctrl = SimplifiedController(SimplifiedConfig())
    grads = stable_grads(N)
    grads[30] = 5.0
    actions = feed(ctrl, trend(N, -0.05), grads)
    d = only_decision(ctrl)
    assert d["action"] == "gradient_spikes" and d["signals"]["spikes"] == 1
    assert "Gradient spikes - tightening gradient clipping" in d["reason"]
    assert d["grad_clip_factor"] == pytest.approx(0.8) and actions[-1].grad_clip_factor == pytest.approx(0.8)
    assert (d["lr_factor"], d["reg_factor"], d["batch_adjustment"]) == (1.0, 1.0, 1.0)


def test_spikes_with_clipping_at_its_tightest_grow_the_batch_within_bounds():
    cfg = SimplifiedConfig()
    ctrl = SimplifiedController(cfg, grad_accum=2)
    grads = stable_grads(N)
    grads[30] = 5.0
    for k in range(12):
        feed(ctrl, trend(N, -0.05, seed=k), grads, start=1 + k * N)
    names = [d["action"] for d in ctrl.decisions]
    tighten = names.count("gradient_spikes")
    assert tighten == math.ceil(math.log(cfg.clip_factor_min) / math.log(cfg.clip_tighten))  # 0.8^7 < 0.25
    assert names == ["gradient_spikes"] * tighten + ["gradient_spikes_clip_at_min"] * (12 - tighten)
    grown = ctrl.decisions[tighten:]
    assert [d["grad_accum"] for d in grown[:3]] == [4, 8, 8]  # doubles, then stops at base * max_batch_factor
    assert [d["batch_adjustment"] for d in grown[:3]] == [2.0, 4.0, 4.0]
    assert grown[0]["reason"].startswith(f"SCU Step {(tighten + 1) * N}: Gradient spikes with clipping at its tightest")
    assert grown[1]["applied"] and not grown[2]["applied"] and "nothing changed" in grown[2]["reason"]
    assert ctrl.clip_factor == cfg.clip_factor_min


def test_plateau_with_low_entropy_encourages_exploration():
    ctrl = SimplifiedController(SimplifiedConfig(entropy_window=N), grad_accum=2)
    ctrl.grad_accum = 4  # grown earlier by the spike rule; exploration shrinks it back toward the base
    losses = 3.0 + 0.01 * np.sin(2 * np.pi * np.arange(N) / 16)
    feed(ctrl, losses, stable_grads(N))
    d = only_decision(ctrl)
    assert d["action"] == "plateau_low_entropy"
    assert d["signals"]["entropy"] < SimplifiedConfig().entropy_low and abs(d["signals"]["improvement"]) < 0.002
    assert d["reason"].startswith("SCU Step 50: Loss plateau with low multi-scale entropy (too stable) - encouraging exploration")
    assert (d["lr_factor"], d["reg_factor"], d["grad_accum"]) == (pytest.approx(1.3), pytest.approx(0.7), 2)


def test_noisy_plateau_is_slow_not_too_stable():
    """A flat loss with white-noise fluctuations has high entropy: the exploration rule must not fire."""
    ctrl = SimplifiedController(SimplifiedConfig(entropy_window=N))
    feed(ctrl, trend(N, 0.0, noise=0.001), stable_grads(N))
    d = only_decision(ctrl)
    assert d["signals"]["entropy"] > SimplifiedConfig().entropy_low
    assert d["action"] == "slow_stable"


def test_every_rule_in_the_table_has_a_test_above():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    assert all(f'"{r.name}"' in source for r in RULES)


def test_factors_stay_within_bounds_and_are_returned_every_step():
    cfg = SimplifiedConfig()
    up, down = SimplifiedController(cfg), SimplifiedController(cfg)
    for k in range(15):
        feed(up, trend(N, -0.004, seed=k), stable_grads(N, seed=k), start=1 + k * N)
        acts = feed(down, trend(N, 0.03, seed=k), unstable_grads(N, seed=k), start=1 + k * N)
    assert up.lr_factor == cfg.lr_factor_max
    assert (down.lr_factor, down.reg_factor) == (cfg.lr_factor_min, cfg.reg_factor_max)
    assert all(a.lr_factor == cfg.lr_factor_min and a.reg_factor == cfg.reg_factor_max for a in acts)


def test_decides_only_every_control_frequency_steps_with_a_full_window():
    ctrl = SimplifiedController(SimplifiedConfig(control_frequency=20, window=50))
    actions = feed(ctrl, trend(100, -0.004), stable_grads(100))
    assert [i + 1 for i, a in enumerate(actions) if a.reasons] == [60, 80, 100]


def test_missing_gradient_norms_disable_the_gradient_rules_only():
    ctrl = SimplifiedController(SimplifiedConfig())
    feed(ctrl, trend(N, 0.03), [None] * N)
    assert ctrl.last_signals.grad_cv is None and ctrl.decisions == []
    assert ctrl.summary()["average_grad_norm"] is None


def test_state_dict_roundtrip_continues_identically():
    cfg = SimplifiedConfig(control_frequency=25)
    losses = np.concatenate([trend(150, -0.004), trend(150, 0.03, seed=5)])
    grads = stable_grads(150) + unstable_grads(150)
    a = SimplifiedController(cfg, grad_accum=2)
    feed(a, losses[:130], grads[:130])
    b = SimplifiedController(cfg, grad_accum=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    rest_a = feed(a, losses[130:], grads[130:], start=131)
    rest_b = feed(b, losses[130:], grads[130:], start=131)
    assert rest_a == rest_b
    assert a.decisions == b.decisions and a.summary() == b.summary()
    assert {d["action"] for d in a.decisions} >= {"slow_stable", "degrading"}


def test_summary_reports_the_run():
    ctrl = SimplifiedController(SimplifiedConfig())
    feed(ctrl, trend(2 * N, -0.004), stable_grads(2 * N))
    assert not ctrl.summary()["multiscale_analysis_ran"]  # 100 < entropy_window = 128 steps
    feed(ctrl, trend(N, -0.004, seed=9), stable_grads(N, seed=9), start=2 * N + 1)
    s = ctrl.summary()
    assert s["total_steps"] == 150 and s["control_checks"] == 3 and s["actions_applied"] == 3
    assert s["actions_by_rule"]["slow_stable"] == 3
    assert s["multiscale_analysis_ran"] and s["multiscale_analysis_runs"] == 1
    assert s["final_lr_factor"] == pytest.approx(1.2**3)
    assert s["average_grad_norm"] == pytest.approx(np.mean(stable_grads(2 * N) + stable_grads(N, seed=9)))
    json.dumps(s)
    json.dumps(ctrl.describe())


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"wavelet": "db44"}, "unknown wavelet"),
        ({"wavelet": "bior2.2"}, "not orthogonal"),
        ({"cv_stable": 0.7, "cv_unstable": 0.6}, "cv_stable <= cv_unstable"),
        ({"lr_increase": 0.9}, "lr_increase must be > 1"),
        ({"lr_factor_max": 0.5}, "lr_factor_max"),
        ({"window": 2}, "window must be >= 4"),
    ],
)
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SimplifiedConfig(**bad)


def test_regularization_composes_with_pi_through_its_target():
    assert regularized_target(0.05, 2.0) == pytest.approx(0.025)
    assert regularized_target(0.05, 0.5) == pytest.approx(0.1)
    assert regularized_target(0.5, 0.25) < 1.0


# ---- wavelet entropy ----


def test_wavelet_entropy_matches_a_hand_computation():
    # x = u + v with u = [1,1,-1,-1,-1,-1,1,1] (Haar level-2 details 2, -2: energy 8) and
    # v = [1,-1,1,-1,-1,1,-1,1] (level-1 details +-sqrt2: energy 8); both have zero mean and slope.
    # Bands (A2, D2, D1) hold (0, 8, 8): p = (0, 1/2, 1/2), H = ln 2, normalized by ln 3.
    x = [2.0, 0.0, 0.0, -2.0, -2.0, 0.0, 0.0, 2.0]
    assert wavelet_entropy(x, "haar", 2) == (pytest.approx(math.log(2) / math.log(3), rel=1e-12), 2)
    # At level 3 the bands are (A3, D3, D2, D1) = (0, 0, 8, 8): ln 2 / ln 4 = 1/2.
    assert wavelet_entropy(x, "haar", 3) == (pytest.approx(0.5, rel=1e-12), 3)
    # The trend is removed first: a constant and a line on top change nothing.
    shifted = [xi + 3.0 + 0.25 * i for i, xi in enumerate(x)]
    assert wavelet_entropy(shifted, "haar", 2)[0] == pytest.approx(math.log(2) / math.log(3), rel=1e-9)


def test_sinusoid_has_low_entropy_and_white_noise_high():
    t = np.arange(1024)
    sine = wavelet_entropy(np.sin(2 * np.pi * t / 16), "db4", 4)
    noise = [wavelet_entropy(np.random.default_rng(s).standard_normal(1024), "db4", 4) for s in range(5)]
    assert sine[1] == 4 and sine[0] < 0.1
    # White noise splits its energy like the coefficient counts (1/2, 1/4, 1/8, 1/16, 1/16): H/ln5 = 0.807.
    expected = -sum(p * math.log(p) for p in (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 16)) / math.log(5)
    assert all(abs(h - expected) < 0.05 for h, _ in noise)
    assert min(h for h, _ in noise) > 5 * sine[0]


def test_equal_energy_across_scales_has_entropy_near_one():
    h, level = wavelet_entropy(equal_energy_fluctuation(256, 4, 1.0), "db4", 4)
    assert level == 4 and h > 0.97


@pytest.mark.parametrize("n", [0, 1, 5, 13])
def test_short_signals_return_none(n):
    assert wavelet_entropy(np.ones(n) + np.arange(n), "db4", 4) is None


def test_level_is_capped_by_history_and_by_dwt_max_level():
    x = np.random.default_rng(0).standard_normal(1000)
    assert wavelet_entropy(x[:14], "db4", 4)[1] == 1  # db4 needs 14 samples for one level
    assert wavelet_entropy(x[:50], "db4", 4)[1] == 2
    assert wavelet_entropy(x, "db4", 3)[1] == 3


@pytest.mark.parametrize("signal", [np.full(128, 2.5), 1.0 + 0.01 * np.arange(128), np.zeros(128)])
def test_constant_or_linear_signals_have_zero_entropy(signal):
    assert wavelet_entropy(signal, "db4", 4) == (0.0, 4)


def test_controller_survives_constant_and_short_histories():
    ctrl = SimplifiedController(SimplifiedConfig(control_frequency=5, window=5, entropy_window=5))
    feed(ctrl, [2.0] * 20, [1.0] * 20)
    assert ctrl.checks == 4 and ctrl.entropy_runs == 0 and not ctrl.summary()["multiscale_analysis_ran"]
    flat = SimplifiedController(SimplifiedConfig(entropy_window=N))
    feed(flat, [2.0] * N, [1.0] * N)
    assert flat.last_signals.entropy == 0.0 and flat.decisions[0]["action"] == "plateau_low_entropy"


def test_sscu_config_section_is_validated_in_one_line():
    from scu import ScuError
    from scu.config.schema import build_config, dump_config, load_config

    cfg = load_config(None, {"sscu.enabled": True, "sscu.control_frequency": 10})
    assert cfg.sscu == SimplifiedConfig(enabled=True, control_frequency=10)
    import yaml

    assert build_config(yaml.safe_load(dump_config(cfg))).sscu == cfg.sscu
    with pytest.raises(ScuError, match=r"sscu\.wavlet: unknown key"):
        build_config({"sscu": {"wavlet": "db4"}})
    with pytest.raises(ScuError, match="sscu: unknown wavelet 'db44'"):
        build_config({"sscu": {"wavelet": "db44"}})


def test_outputs_hold_every_action_the_summary_and_the_settings():
    ctrl = SimplifiedController(SimplifiedConfig(), grad_accum=2)
    feed(ctrl, trend(N, -0.004), stable_grads(N))
    files = ctrl.outputs(final_lr=1e-3, regularization="pi_target", training={"steps": 50})
    assert set(files) == {"scu_training_metrics.json", "scu_training_summary.json", "simple_training_config.json"}
    (action,) = files["scu_training_metrics.json"]["actions"]
    assert action["action"] == "slow_stable" and action["batch_adjustment"] == 1.0 and action["grad_accum"] == 2
    summary = files["scu_training_summary.json"]
    assert summary["final_lr"] == 1e-3 and summary["regularization_acts_on"] == "pi_target"
    settings = files["simple_training_config.json"]
    assert settings["sscu"]["base_grad_accum"] == 2 and [r["name"] for r in settings["sscu"]["rules"]] == [r.name for r in RULES]
    json.dumps(files)
