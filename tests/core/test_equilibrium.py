"""The equilibrium detector: all three conditions are needed, each one alone blocks it, it waits out the first
epoch, it fires once, its threshold on λ is relative, and a restored state continues exactly."""

import json

import numpy as np
import pytest

from scu.core.equilibrium import EquilibriumConfig, EquilibriumDetector, replay
from scu.core.telemetry import StepTelemetry

TARGET = 0.05
W = EquilibriumConfig().window
LAM_TOL = EquilibriumConfig().lambda_tolerance


def stream(n, lam=0.15, lam_change=0.0, s_off=0.0, loss_change=0.0, seed=0, lam_noise=0.01, s_noise=0.02, loss_noise=0.003):
    """Per-step (lam, S, loss): λ and loss moving by a relative `*_change` per window of W steps, S off by `s_off`."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / (W - 1)
    lams = lam * (1 + lam_change) ** t * (1 + lam_noise * rng.standard_normal(n))
    s = TARGET * (1 + s_off) * (1 + s_noise * rng.standard_normal(n))
    loss = 3.0 * (1 + loss_change) ** t * (1 + loss_noise * rng.standard_normal(n))
    return lams, s, loss


def telemetry(step, lam, s, loss, target=TARGET):
    param = s * loss / (1 - s)  # so that telemetry.s == s
    return StepTelemetry(step=step, data_bpt=float(loss), param_bpt=float(param), tokens=256, lr=1e-3, lam=lam, target_s=target)


def feed(det, lams, s, loss, start=1):
    return [det.step(telemetry(start + i, *x)) for i, x in enumerate(zip(lams, s, loss))]


def test_fires_on_the_first_full_window_where_all_three_hold():
    det = EquilibriumDetector(EquilibriumConfig())
    actions = feed(det, *stream(3 * W))
    assert det.equilibrium_step == W
    fired = [a for a in actions if a.reasons]
    assert len(fired) == 1 and "λ-equilibrium" in fired[0].reasons[0]
    assert not any(a.stop for a in actions)  # without auto_stop it only records the step


@pytest.mark.parametrize(
    "case",
    [
        {"lam_change": 2 * LAM_TOL},  # λ still climbing twice the tolerance per window: the controller is still working
        {"lam_change": -2 * LAM_TOL},
        {"s_off": 0.10},  # S 10% above its target
        {"s_off": -0.10},
        {"loss_change": -0.03},  # the loss still falls 3% per window
    ],
)
def test_each_condition_alone_keeps_it_from_firing(case):
    det = EquilibriumDetector(EquilibriumConfig())
    feed(det, *stream(4 * W, **case))
    assert det.equilibrium_step is None
    assert not all(det.signals.holds(det.config).values())


def test_a_slightly_rising_loss_counts_as_a_plateau():
    det = EquilibriumDetector(EquilibriumConfig())
    feed(det, *stream(2 * W, loss_change=+0.02))
    assert det.equilibrium_step == W


def test_fires_once_the_loss_stops_falling():
    falling = stream(2 * W, loss_change=-0.05, seed=1)
    flat = stream(3 * W, seed=2)
    # continue the flat part from where the falling part ended
    flat = (flat[0], flat[1], flat[2] * falling[2][-1] / 3.0)
    det = EquilibriumDetector(EquilibriumConfig())
    feed(det, *[np.concatenate([a, b]) for a, b in zip(falling, flat)])
    assert det.equilibrium_step is not None
    assert 2 * W < det.equilibrium_step < 3 * W  # needs a window that is mostly flat


def test_auto_stop_asks_for_a_stop_at_the_equilibrium_step_only():
    det = EquilibriumDetector(EquilibriumConfig(auto_stop=True))
    actions = feed(det, *stream(2 * W))
    stops = [i + 1 for i, a in enumerate(actions) if a.stop]
    assert stops == [det.equilibrium_step] == [W]
    assert "stopping" in actions[W - 1].reasons[0]


def test_lambda_threshold_is_relative():
    steps = []
    for lam in (0.001, 0.15, 5.0):
        det = EquilibriumDetector(EquilibriumConfig())
        feed(det, *stream(3 * W, lam=lam, lam_change=0.04, lam_noise=0.03, seed=3))
        steps.append(det.equilibrium_step)
    assert steps[0] is not None and steps == [steps[0]] * 3


def test_no_controlled_lambda_no_equilibrium_and_a_gap_restarts_the_window():
    lams, s, loss = stream(3 * W)
    det = EquilibriumDetector(EquilibriumConfig())
    for i in range(2 * W):
        det.step(telemetry(i + 1, None, s[i], loss[i], target=None))
    assert det.equilibrium_step is None
    det = EquilibriumDetector(EquilibriumConfig())
    h = W // 2
    feed(det, lams[:h], s[:h], loss[:h])
    det.step(telemetry(h + 1, None, s[h], loss[h], target=None))
    feed(det, lams[h + 1 :], s[h + 1 :], loss[h + 1 :], start=h + 2)
    assert det.equilibrium_step == h + 1 + W


def test_state_dict_continues_exactly():
    data = stream(5 * W, lam_change=2 * LAM_TOL, seed=4)
    data = (np.concatenate([data[0][: 2 * W], data[0][2 * W - 1] * stream(3 * W, lam=1.0, seed=5)[0]]), data[1], data[2])
    whole = EquilibriumDetector(EquilibriumConfig())
    feed(whole, *data)
    assert whole.equilibrium_step is not None and whole.equilibrium_step > 2 * W + 20
    first = EquilibriumDetector(EquilibriumConfig())
    cut = 2 * W + 20
    feed(first, *(x[:cut] for x in data))
    state = json.loads(json.dumps(first.state_dict()))  # it goes into metadata.json and the checkpoint
    second = EquilibriumDetector(EquilibriumConfig())
    second.load_state_dict(state)
    feed(second, *(x[cut:] for x in data), start=cut + 1)
    assert second.equilibrium_step == whole.equilibrium_step
    assert vars(second.signals) == vars(whole.signals)


@pytest.mark.parametrize("min_epochs, fires_at", [(None, 3 * W + 15), (1.0, 2 * W + 10), (0.5, W + 5), (0.0, W)])
def test_it_waits_until_min_epochs_of_tokens_have_been_trained_on(min_epochs, fires_at):
    """Every window from W on holds; an epoch of (2W + 10) x 256 tokens ends at step 2W + 10, the first it may fire
    with min_epochs 1 (the default, 1.5: at 3W + 15)."""
    config = EquilibriumConfig() if min_epochs is None else EquilibriumConfig(min_epochs=min_epochs)
    det = EquilibriumDetector(config, tokens_per_epoch=(2 * W + 10) * 256)
    feed(det, *stream(4 * W))
    assert det.equilibrium_step == fires_at
    unknown = EquilibriumDetector(EquilibriumConfig())  # the epoch's size not known: the condition is off
    feed(unknown, *stream(4 * W))
    assert unknown.equilibrium_step == W


def test_the_token_count_survives_a_checkpoint_and_an_older_one_counts_as_past_the_epoch():
    per_epoch = (2 * W + 10) * 256
    config = EquilibriumConfig(min_epochs=1.0)
    first = EquilibriumDetector(config, tokens_per_epoch=per_epoch)
    lams, s, loss = stream(4 * W)
    feed(first, lams[:W], s[:W], loss[:W])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = EquilibriumDetector(config, tokens_per_epoch=per_epoch)
    resumed.load_state_dict(state)
    feed(resumed, lams[W:], s[W:], loss[W:], start=W + 1)
    assert resumed.equilibrium_step == 2 * W + 10
    del state["tokens_seen"]  # written before min_epochs existed
    old = EquilibriumDetector(config, tokens_per_epoch=per_epoch)
    old.load_state_dict(state)
    feed(old, lams[W:], s[W:], loss[W:], start=W + 1)
    assert old.equilibrium_step == W + 1


def test_replay_of_metrics_rows_matches_the_live_detector():
    lams, s, loss = stream(3 * W, seed=6)
    live = EquilibriumDetector(EquilibriumConfig())
    feed(live, lams, s, loss)
    rows = []
    for i in range(3 * W):
        t = telemetry(i + 1, lams[i], s[i], loss[i])
        rows.append({"step": t.step, "data_bpt": t.data_bpt, "param_bpt": t.param_bpt, "lambda_used": t.lam, "target_s": TARGET})
    assert replay(rows).equilibrium_step == live.equilibrium_step


@pytest.mark.parametrize("bad", [{"window": 19}, {"lambda_tolerance": 0.0}, {"s_tolerance": -1.0}, {"loss_tolerance": 0.0},
                                 {"min_epochs": -1.0}, {"min_epochs": float("inf")}])
def test_config_refuses_a_short_window_and_non_positive_tolerances(bad):
    with pytest.raises(ValueError):
        EquilibriumConfig(**bad)


def test_fixed_lambda_fires_once_s_stops_moving_and_not_while_it_climbs():
    """target_s: auto: no target to reach, so the detector waits for S's own trend (and the loss) to flatten."""
    lams, s, loss = stream(3 * W, lam=1.0, seed=7)
    climbing = s * (1 + 0.5) ** (np.arange(3 * W) / (W - 1))  # S up 50% per window: the change still grows
    det = EquilibriumDetector(EquilibriumConfig())
    feed_fixed = lambda d, ss: [d.step(telemetry(i + 1, 1.0, ss[i], loss[i], target=None)) for i in range(3 * W)]  # noqa: E731
    feed_fixed(det, climbing)
    assert det.equilibrium_step is None and not det.signals.holds(det.config)["s_on_target"]
    det = EquilibriumDetector(EquilibriumConfig())
    feed_fixed(det, np.concatenate([climbing[:W], np.full(2 * W, climbing[W - 1]) * s[W:] / TARGET]))
    assert det.equilibrium_step is not None and W < det.equilibrium_step <= 2 * W + 1


def test_the_judged_steps_are_counted_from_a_full_window_past_min_epochs_and_restart_with_the_window():
    """`judged_steps` (every Action reports it) counts the steps the detector judged; the saved average reads it."""
    cfg = EquilibriumConfig(min_epochs=1.0)
    det = EquilibriumDetector(cfg, tokens_per_epoch=256 * (W + 30))  # one epoch = W + 30 steps of 256 tokens
    actions = feed(det, *stream(W + 40, lam_change=4 * LAM_TOL))  # λ keeps climbing: judged, never fires
    counts = [a.report["judged_steps"] for a in actions]
    assert counts[: W + 29] == [0] * (W + 29)  # window full at W, but min_epochs holds it back to step W + 30
    assert counts[W + 29:] == list(range(1, 12))
    assert det.equilibrium_step is None
    det.step(StepTelemetry(step=W + 41, data_bpt=3.0, param_bpt=0.0, tokens=256, lr=1e-3, lam=None, target_s=TARGET))
    assert det.judged_steps == 0  # a step without a penalty restarts the window, and with it the count
    state = det.state_dict()
    assert json.loads(json.dumps(state))["judged_steps"] == 0


@pytest.mark.parametrize("start", ["start", "judged"])
def test_the_average_weights_an_ema_from_the_start_or_the_plain_mean_of_the_judged_steps(start):
    cfg = EquilibriumConfig(auto_stop=True, window=20, average_from=start)
    ema = 2 / 21
    weights = [cfg.average_weight(k) for k in range(0, 15)]
    if start == "start":
        assert weights == [ema] * 15 and cfg.average_span(3) == 20
    else:  # none before the first judged step, then 1, 1/2, ... (their plain mean) until 1/k falls below the EMA's
        assert weights[0] is None and weights[1:] == [max(1 / k, ema) for k in range(1, 15)]
        assert weights[1] == 1.0 and weights[14] == ema and cfg.average_span(3) == 3 and cfg.average_span(50) == 20
    assert cfg.averaging and not EquilibriumConfig(auto_stop=True, average=False).averaging
    with pytest.raises(ValueError, match="average_from"):
        EquilibriumConfig(average_from="end")
