import json
import math

import pytest

from scu.core.pi import PIConfig, PIController, log_odds_error

# Most tests feed S itself, which only `smoothing: ratio` reads; the tests of `smoothing: data` (the default) at the
# end pass each step's (DataBPT, ParamBPT).


def test_s_above_target_raises_lambda_and_below_lowers_it():
    up = PIController(PIConfig(smoothing="ratio", target_s=0.05, lambda_init=1.0))
    down = PIController(PIConfig(smoothing="ratio", target_s=0.05, lambda_init=1.0))
    assert up.update(0.10) > 1.0
    assert down.update(0.02) < 1.0


def test_fixed_lambda_when_bounds_equal():
    c = PIController(PIConfig(smoothing="ratio", lambda_min=0.3, lambda_max=0.3, lambda_init=1.0))
    assert [c.update(s) for s in (0.0, 0.5, 0.9)] == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("s,bound", [(0.9, "max"), (1e-6, "min")])
def test_anti_windup_at_both_bounds(s, bound):
    cfg = PIConfig(smoothing="ratio", target_s=0.05, lambda_min=1e-3, lambda_max=10.0, ema_alpha=1.0)
    c = PIController(cfg)
    for _ in range(200):
        c.update(s)
    assert c.at_bound == bound
    frozen = c.integral
    # While pinned and pushed further in, the integral must not grow.
    for _ in range(50):
        c.update(s)
    assert c.integral == frozen
    # Once S crosses the target, lambda leaves the bound at once (no wound-up integral to unwind).
    c.update(0.05 * (0.9 if bound == "max" else 1.1))
    assert c.at_bound is None


def test_state_dict_roundtrip_continues_identically():
    a = PIController(PIConfig(smoothing="ratio"))
    seq = [0.2 * math.exp(-i / 30) + 0.01 for i in range(100)]
    for s in seq[:50]:
        a.update(s)
    b = PIController(PIConfig(smoothing="ratio"))
    b.load_state_dict(a.state_dict())
    assert [a.update(s) for s in seq[50:]] == [b.update(s) for s in seq[50:]]


def test_guide_law_reproduces_reference_update():
    cfg = PIConfig(smoothing="ratio", law="guide", kp=0.8, ki=0.15, deadband=0.003, lambda_min=1e-4, lambda_max=2.0, ema_alpha=1.0)
    c = PIController(cfg)
    lam, integral = 1.0, 0.0
    for s in (0.10, 0.08, 0.031, 0.02, 0.5):
        e = s - 0.05
        if abs(e) > 0.003:
            integral = min(max(0.995 * integral + 0.15 * e, -0.2), 0.2)
            lam = min(max(lam * math.exp(0.8 * e + integral), 1e-4), 2.0)
        assert c.update(s) == pytest.approx(lam, rel=1e-12)


def test_nan_s_is_refused():
    with pytest.raises(ValueError):
        PIController(PIConfig(smoothing="ratio")).update(float("nan"))


def bumpless(**kw) -> PIController:
    return PIController(PIConfig(smoothing="ratio", law="bumpless", target_s=0.1, lambda_init=1.0, lambda_min=1e-6, lambda_max=1e3,
                                 ema_alpha=1.0, **kw))


def test_bumpless_holds_lambda_while_s_rises_on_course():
    c = bumpless()
    # S climbing steeply toward S* (log-odds up ~0.5 per step): on course, so lambda is left where it started
    lams = [c.update(s) for s in (1e-3, 2e-3, 3.5e-3, 6e-3, 0.01, 0.016, 0.025, 0.04, 0.06)]
    assert lams == [1.0] * len(lams)
    assert not c.tracking


def test_bumpless_lowers_lambda_while_s_stalls_below_target():
    c = bumpless()
    lams = [c.update(0.001) for _ in range(30)]  # S stuck at 1% of S*: lambda is far too high
    assert lams[0] == 1.0 and all(b < a for a, b in zip(lams[1:], lams[2:]))
    # the descent is start_gain * error_clip per step at most: fast, but bounded
    assert math.log(lams[1] / lams[-1]) == pytest.approx(28 * 0.15 * 3.0, rel=1e-9)


def odds_error(s: float, target: float = 0.1) -> float:
    return math.log(s / (1 - s)) - math.log(target / (1 - target))


def test_bumpless_starts_tracking_near_the_target_from_the_lambda_of_that_moment():
    c = bumpless()
    for s in (0.02, 0.05, 0.08):  # rising on course, still below 0.9 * S*
        c.update(s)
    assert not c.tracking and c.lam == 1.0
    c.update(0.095)  # within 10% of S*: tracking starts from lambda = 1, with no jump beyond one PI step
    assert c.tracking
    e, change = odds_error(0.095), odds_error(0.095) - odds_error(0.08)
    assert math.log(c.lam) == pytest.approx(2.0 * change + (0.04 + 0.05 * abs(e)) * e, rel=1e-9)
    # above target the integral raises lambda, faster the further S is above
    small, large = bumpless(), bumpless()
    for ctrl in (small, large):
        for s in (0.05, 0.1, 0.1):
            ctrl.update(s)
    lam0 = small.lam
    assert large.lam == lam0
    d_small = math.log(small.update(0.12) / lam0)
    d_large = math.log(large.update(0.3) / lam0)
    assert 0 < d_small < d_large


def test_bumpless_state_roundtrip_includes_the_phase():
    a = bumpless()
    seq = [0.002 * (1.15 ** i) for i in range(40)] + [0.1 + 0.01 * math.sin(i / 3) for i in range(40)]
    for s in seq[:45]:
        a.update(s)
    assert a.tracking
    b = bumpless()
    b.load_state_dict(a.state_dict())
    assert [a.update(s) for s in seq[45:]] == [b.update(s) for s in seq[45:]]


def balance_law(**kw) -> PIController:
    return PIController(PIConfig(smoothing="ratio", law="balance", target_s=0.1, lambda_min=1e-6, lambda_max=1e3, ema_alpha=1.0, **kw))


def test_balance_law_sits_at_the_measured_balance_when_s_is_on_target():
    c = balance_law(lambda_init=1.0)
    lams = [c.update(0.1, balance=(0.02 * 5.0, 5.0)) for _ in range(10)]  # -<g_d, g_p> / ||g_p||^2 = 0.02
    assert lams == pytest.approx([0.02] * 10, rel=1e-12)  # e = 0: no P, no integral; lambda_init plays no part


def test_balance_law_ignores_lambda_init_once_the_change_is_non_zero():
    # the first step has no learned change, so no penalty gradient (||g_p|| = 0): lambda_init stands in for the
    # balance for the next step only (S = 0 is far below S*: lambda_init * e^(-kp * 3))
    seq = [(0.0, (0.0, 0.0))] + [(0.01 * i, (0.3 / i, 1.0 / i)) for i in range(1, 30)]
    runs = []
    for lambda_init in (1e-2, 1.0, 100.0):
        c = balance_law(lambda_init=lambda_init)
        runs.append([c.update(s, balance=b) for s, b in seq])
    assert [r[0] for r in runs] == pytest.approx([x * math.exp(-6.0) for x in (1e-2, 1.0, 100.0)], rel=1e-12)
    assert runs[0][1:] == runs[1][1:] == runs[2][1:]


def test_balance_law_proportional_part_lets_s_rise_then_leads_near_the_target():
    c = balance_law(lambda_init=1.0, lead_steps=0.0)
    lam_low = c.update(0.001, balance=(1.0, 1.0))  # far below S*: e clipped at -3, lambda = balance * e^(-6)
    assert lam_low == pytest.approx(math.exp(-2.0 * 3.0), rel=1e-12)
    led = balance_law(lambda_init=1.0, lead_steps=10.0)
    plain = balance_law(lambda_init=1.0, lead_steps=0.0)
    for ctrl in (led, plain):  # S climbing toward S*, still below it
        for s in (0.05, 0.07, 0.085):
            ctrl.update(s, balance=(1.0, 1.0))
    # e is still < 0, but S is heading above S* within 10 steps: the lead raises lambda before the crossing
    assert plain.lam < 1.0 < led.lam


def test_balance_law_integral_starts_near_the_target_and_removes_an_offset():
    c = balance_law(lambda_init=1.0, lead_steps=0.0)
    for s in (0.001, 0.01, 0.05):  # S rising from 0 is not an offset of the balance
        c.update(s, balance=(1.0, 1.0))
    assert c.integral == 0.0 and not c.tracking
    c.update(0.12, balance=(1.0, 1.0))  # above target: now it integrates, and lambda rises above the balance
    assert c.tracking and c.integral == pytest.approx(odds_error(0.12))
    assert c.lam > math.exp(2.0 * odds_error(0.12))


def test_balance_law_needs_the_gradient_balance_and_keeps_it_in_its_state():
    with pytest.raises(ValueError, match="gradient balance"):
        balance_law().update(0.05)
    a = balance_law()
    seq = [(0.01 * i, (0.2 + 0.01 * math.sin(i), 1.0 + 0.1 * i)) for i in range(1, 30)]
    for s, b in seq[:15]:
        a.update(s, balance=b)
    b_ctrl = balance_law()
    b_ctrl.load_state_dict(a.state_dict())
    assert [a.update(s, balance=b) for s, b in seq[15:]] == [b_ctrl.update(s, balance=b) for s, b in seq[15:]]


def test_balance_law_lead_does_not_fire_on_an_exponential_start_far_below_the_target():
    # S doubling every step from ~0 (its log-odds rise 0.7 a step): extrapolated in log-odds, S would pass S* within
    # 10 steps and lambda would jump above the balance (SmolLM2 went to lambda 81 at step 9 that way); in S it is
    # still far below S*, so lambda stays under the balance and S keeps rising
    c = balance_law(lambda_init=1.0, lead_steps=10.0)
    lams = [c.update(s, balance=(1.0, 1.0)) for s in (0.0005, 0.001, 0.002, 0.004, 0.008)]
    assert all(lam < 1.0 for lam in lams[1:])


def test_balance_law_lead_extrapolates_a_rise_but_not_a_fall():
    # S falling back toward S* from above: read ahead, the fall would put S below S* and drop lambda under the
    # balance while S is still too high (SmolLM2: lambda 1.3 -> 0.002 in two steps); only the rise is led
    c = balance_law(lambda_init=1.0, lead_steps=3.0)
    for s in (0.16, 0.13):
        lam = c.update(s, balance=(1.0, 1.0))
    assert lam == pytest.approx(math.exp(2.0 * odds_error(0.13) + 0.04 * (odds_error(0.16) + odds_error(0.13))))
    assert lam > 1.0


def test_balance_law_keeps_the_last_positive_balance_when_the_data_pull_turns_inward():
    # -<g_d, g_p> <= 0 while Adam still grows the change: lambda must not fall to lambda_min (S then ran to 3.7x S*)
    c = balance_law(lambda_init=1.0, lead_steps=0.0, tracking_alpha=1.0)  # each step's balance as it is
    c.update(0.1, balance=(0.5, 1.0))
    assert c.lambda_balance == pytest.approx(0.5)
    lams = [c.update(0.1, balance=(-0.2, 1.0)) for _ in range(3)]
    assert c.lambda_balance < 0.0
    assert lams == pytest.approx([0.5] * 3, rel=1e-12)  # e = 0: the held balance, no integral


def test_balance_margin_multiplies_the_balance_and_nothing_else():
    # the same S and balance sequence: every lambda is the margin times the unmargined one, start-up and tracking alike
    seq = [(0.01 * i, (0.2 + 0.05 * math.sin(i), 1.0 + 0.1 * i)) for i in range(1, 25)]
    plain, margined = balance_law(), balance_law(balance_margin=1.25)
    lams = [(plain.update(s, balance=b), margined.update(s, balance=b)) for s, b in seq]
    assert plain.tracking and margined.tracking
    assert [m for _, m in lams] == pytest.approx([1.25 * p for p, _ in lams], rel=1e-12)


def test_balance_margin_leaves_the_start_before_any_balance_alone():
    # no learned change yet (||g_p||^2 = 0): lambda_init stands in, unscaled
    c = balance_law(lambda_init=0.3, lead_steps=0.0, balance_margin=1.25)
    assert c.update(0.1, balance=(0.0, 0.0)) == pytest.approx(0.3)  # S on target: e = 0


@pytest.mark.parametrize("margin", [0.0, -1.0])
def test_balance_margin_must_be_positive(margin):
    with pytest.raises(ValueError, match="balance_margin must be > 0"):
        PIConfig(law="balance", balance_margin=margin)


def test_balance_law_averages_the_balance_more_slowly_once_tracking():
    c = balance_law(lambda_init=1.0, lead_steps=0.0, tracking_alpha=0.25)  # ema_alpha 1: no smoothing before tracking
    c.update(0.01, balance=(1.0, 1.0))
    c.update(0.02, balance=(3.0, 1.0))
    assert c.lambda_balance == pytest.approx(3.0)  # not tracking yet: the step's own balance
    c.update(0.1, balance=(3.0, 1.0))  # tracking starts with this update, after its balance was averaged
    c.update(0.1, balance=(7.0, 1.0))
    assert c.lambda_balance == pytest.approx(0.75 * 3.0 + 0.25 * 7.0)


def test_balance_law_resumes_its_start_up_state_exactly():
    seq = [(0.01 * i, (0.2 + 0.05 * math.sin(i), 1.0 + 0.1 * i)) for i in range(1, 30)] + [(0.1, (-0.1, 2.0))] * 3
    a = balance_law(tracking_alpha=0.05)
    for s, b in seq[:15]:
        a.update(s, balance=b)
    assert a.tracking
    resumed = balance_law(tracking_alpha=0.05)
    resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [a.update(s, balance=b) for s, b in seq[15:]] == [resumed.update(s, balance=b) for s, b in seq[15:]]


def test_data_smoothing_averages_only_the_noisy_data_bpt():
    c = PIController(PIConfig(smoothing="data", ema_alpha=0.25))
    data, param = [6.0, 7.0, 5.0, 6.5], [0.1, 0.2, 0.4, 0.8]
    data_hat = None
    for d, p in zip(data, param):
        c.update(p / (d + p), parts=(d, p))
        data_hat = d if data_hat is None else 0.75 * data_hat + 0.25 * d
        assert c.s_hat == pytest.approx(p / (data_hat + p))


def test_data_smoothing_follows_a_jump_of_param_bpt_in_the_same_step_where_ratio_smoothing_lags():
    # ParamBPT is a function of the weights, exact each step; only the ratio EMA delays it by ~1/alpha steps
    data_only, ratio = PIController(PIConfig(smoothing="data")), PIController(PIConfig(smoothing="ratio"))
    for p in (0.0, 0.0, 1.0):
        for c in (data_only, ratio):
            c.update(p / (6.0 + p), parts=(6.0, p))
    assert data_only.s_hat == pytest.approx(1.0 / 7.0)
    assert ratio.s_hat == pytest.approx(0.1 / 7.0)


def test_data_smoothing_needs_the_parts_and_keeps_the_smoothed_data_bpt_in_its_state():
    c = PIController(PIConfig(smoothing="data"))
    with pytest.raises(ValueError, match="parts="):
        c.update(0.05)
    for d in (6.0, 5.0, 7.0):
        c.update(0.3 / (d + 0.3), parts=(d, 0.3))
    resumed = PIController(PIConfig(smoothing="data"))
    resumed.load_state_dict(c.state_dict())
    assert [resumed.update(0.05, parts=(6.2, 0.35)) for _ in range(3)] == [c.update(0.05, parts=(6.2, 0.35)) for _ in range(3)]


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_tracking_alpha_outside_its_range_is_refused(alpha):
    with pytest.raises(ValueError, match="tracking_alpha must be in"):
        PIConfig(law="balance", tracking_alpha=alpha)


def test_growth_estimate_recovers_the_lambda_at_which_the_penalty_stops_growing():
    # whatever lambda the law applies (here it follows a varying balance), lambda_growth is the lambda that would
    # hold ParamBPT still, once it has one step's growth to read; AdamW's momentum average of lambda is accounted for
    c = balance_law(lambda_init=1.0, lead_steps=0.0, momentum=0.9)
    param_bpt, avg, lam_true, sensitivity = 1.0, 0.0, 0.3, 2.0
    growth = []
    for i in range(1, 30):
        applied = c.lam
        c.update(0.1, balance=(0.2 + 0.1 * math.sin(i), 1.0, sensitivity), parts=(9.0, param_bpt))
        growth.append(c.lambda_growth)
        avg = 0.9 * avg + 0.1 * applied
        param_bpt += sensitivity * (lam_true - avg / (1 - 0.9**i)) / math.log(2.0)
    assert growth[0] is None  # one ParamBPT is no growth yet
    assert growth[1:] == pytest.approx([lam_true] * 28, rel=1e-9)


def test_growth_feedforward_sets_lambda_at_the_growth_estimate():
    c = balance_law(lambda_init=1.0, lead_steps=0.0, momentum=0.9, feedforward="growth")
    param_bpt, avg, lams = 1.0, 0.0, []
    for i in range(1, 10):
        applied = c.lam
        lams.append(c.update(0.1, balance=(0.2, 1.0, 2.0), parts=(9.0, param_bpt)))
        avg = 0.9 * avg + 0.1 * applied
        param_bpt += 2.0 * (0.3 - avg / (1 - 0.9**i)) / math.log(2.0)
    assert lams[0] == pytest.approx(0.2)  # no growth measured yet: the balance stands in, not lambda_init
    assert lams[1:] == pytest.approx([0.3] * 8, rel=1e-9)  # S on target: e = 0, lambda = lambda_growth


@pytest.mark.parametrize("bad", [{"feedforward": "gradient"}, {"momentum": 1.0}, {"momentum": -0.1}])
def test_growth_settings_are_checked(bad):
    with pytest.raises(ValueError, match="feedforward must be|momentum must be"):
        PIConfig(law="balance", **bad)



def test_growth_estimate_leaves_out_lambdas_that_multiplied_a_zero_penalty_gradient():
    # step 1 has no learned change (||g_p||^2 = 0): lambda_init, 1000x too high here, put nothing into AdamW's momentum
    c = balance_law(lambda_init=300.0, lead_steps=0.0, momentum=0.9)
    c.update(0.0, balance=(0.0, 0.0, 0.0), parts=(9.0, 0.0))
    second = c.lam  # S = 0: lambda_init * exp(-kp * 3), trained with step 2, the first with a penalty gradient
    assert second < 300.0 / 100
    c.update(0.05, balance=(0.2, 1.0, 2.0), parts=(9.0, 1.0))
    c.update(0.05, balance=(0.2, 1.0, 2.0), parts=(9.0, 1.0))  # ParamBPT did not move under step 2's lambda
    assert c.lambda_growth == pytest.approx(second, rel=1e-12)


def test_growth_estimate_holds_s_while_data_bpt_falls():
    # memorising a small data set lowers DataBPT every step; S holds only if ParamBPT falls in proportion, so the
    # lambda that holds S is above the one that would merely stop ParamBPT growing
    c = PIController(PIConfig(smoothing="data", law="balance", target_s=0.1, lambda_min=1e-6, lambda_max=1e3,
                              ema_alpha=1.0, lead_steps=0.0, momentum=0.0))
    data, param, lam_true, sensitivity = 9.0, 1.0, 0.3, 2.0
    for _ in range(6):
        applied = c.lam
        c.update(param / (data + param), balance=(0.2, 1.0, sensitivity), parts=(data, param))
        next_data = 0.97 * data
        param = param * next_data / data + sensitivity * (lam_true - applied) / math.log(2.0)
        data = next_data
    assert c.lambda_growth == pytest.approx(lam_true, rel=1e-9)


def horizon_law(**kw) -> PIController:
    settings = {"kp": 0.0, "ki": 0.0, "lambda_min": 1e-6, "lambda_max": 1e3, "feedforward": "growth", **kw}
    return PIController(PIConfig(smoothing="data", law="balance", target_s=0.1, ema_alpha=1.0, approach="horizon",
                                 **settings))


def test_horizon_lambda_without_momentum_closes_one_horizonth_of_the_gap_per_step():
    c = horizon_law(momentum=0.0, horizon_steps=4.0)
    c.update(0.0, balance=(0.0, 0.0, 0.0), parts=(9.0, 0.0))
    lam = c.update(0.1, balance=(0.5, 1.0, 2.0), parts=(9.0, 0.5))  # growth not measured yet: the balance, 0.5
    # P* = 0.1 / 0.9 * 9 = 1; lambda = 0.5 - ln2 * (1 - 0.5) / (4 * 2)
    assert lam == pytest.approx(0.5 - math.log(2.0) * 0.5 / 8.0, rel=1e-12)


@pytest.mark.parametrize("memory", ["lambda", "deficit"])
def test_horizon_approach_brings_s_to_its_target_through_adams_momentum_without_overshoot(memory):
    # the linear growth model the law assumes, with AdamW's momentum between lambda and the penalty it acts through:
    # S rises from 0 to S* = 0.1 and stays (on this plant the lead law without its lead overshoots by 19%)
    c = horizon_law(momentum=0.9, horizon_steps=10.0, growth_alpha=1.0, horizon_memory=memory)
    data, param, avg, lam_true, sensitivity, s = 9.0, 0.0, 0.0, 0.3, 0.2, []
    for _ in range(80):
        applied, has_gradient = c.lam, param > 0.0
        c.update(param / (data + param), parts=(data, param),
                 balance=(lam_true, 1.0, sensitivity) if has_gradient else (0.0, 0.0, 0.0))
        s.append(param / (data + param))
        if has_gradient:
            avg = 0.9 * avg + 0.1 * applied
        param = param + sensitivity * (lam_true - avg / (1 - 0.9**c.lam_steps)) / math.log(2.0) if has_gradient else 0.01
    assert max(s) <= 0.1 * 1.02
    assert min(s[25:]) >= 0.1 * 0.95  # settled within a quarter of the steps
    assert s[-1] == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize("memory, gain", [("lambda", None), ("deficit", 1.0)])
def test_horizon_memory_sets_how_much_of_a_jump_in_the_centre_passes_into_lambda(memory, gain):
    # ParamBPT held at its target (nothing to close), the centre (the gradient balance) at 0.5 until lambda has
    # settled there, then one step at 0.6: the "lambda" memory plans the jump H / (H - carried) times over, as if the
    # momentum had carried 0.5 where 0.6 was needed; the "deficit" memory passes it on once
    c = horizon_law(momentum=0.9, horizon_steps=10.0, feedforward="balance", horizon_memory=memory)
    c.update(0.0, balance=(0.0, 0.0, 0.0), parts=(9.0, 0.0))
    for _ in range(200):
        c.update(0.1, balance=(0.5, 1.0, 0.2), parts=(9.0, 1.0))
    assert c.lam == pytest.approx(0.5, rel=1e-6)
    lam = c.update(0.1, balance=(0.6, 1.0, 0.2), parts=(9.0, 1.0))
    carried = 0.9 * (1.0 - 0.9**10) / 0.1
    assert (lam - 0.5) / 0.1 == pytest.approx(gain or 10.0 / (10.0 - carried), rel=1e-4)


@pytest.mark.parametrize("reads, factor", [("error", None), ("heading", 1.0)])
def test_kp_reading_the_heading_does_not_release_the_brake_while_s_rises_into_the_band(reads, factor):
    # S_hat 0.09 against S* 0.1, rising 0.005 a step: tracking has started (band 0.2); read on the error, kp lowers
    # the centre (the gradient balance, 0.5) by exp(kp * e) < 1; read on the heading, 0.09 + 2 * 0.005 = S*, by none
    c = horizon_law(momentum=0.0, feedforward="balance", kp=1.0, start_band=0.2, lead_steps=2.0,
                    horizon_kp_reads=reads)
    c.update(0.0, balance=(0.0, 0.0, 0.0), parts=(9.0, 0.0))
    c.update(0.085, balance=(0.5, 1.0, 0.0), parts=(9.1 * 0.915, 9.1 * 0.085))
    c.update(0.09, balance=(0.5, 1.0, 0.0), parts=(9.1 * 0.91, 9.1 * 0.09))
    assert c.tracking
    e = log_odds_error(0.09, 0.1)
    assert c.centre == pytest.approx(0.5 * (factor or math.exp(e)), rel=1e-6)


def test_horizon_deficit_memory_resumes_mid_tracking_exactly():
    # a checkpoint written while tracking must carry the centres' momentum average, or the resumed plan differs
    seq = [(9.0 + 0.3 * math.sin(i), 0.08 * i if i < 13 else 1.0 + 0.05 * math.cos(i), 0.2 + 0.01 * i)
           for i in range(40)]
    a = horizon_law(momentum=0.9, kp=1.0, horizon_memory="deficit")
    for d, p, sens in seq[:20]:
        a.update(p / (d + p), parts=(d, p), balance=(0.3, 1.0 if p else 0.0, sens if p else 0.0))
    assert a.tracking and a.centre_average != a.centre
    resumed = horizon_law(momentum=0.9, kp=1.0, horizon_memory="deficit")
    resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
    rest = [(p / (d + p), (d, p), (0.3, 1.0, sens)) for d, p, sens in seq[20:]]
    assert [a.update(s, parts=x, balance=b) for s, x, b in rest] == [resumed.update(s, parts=x, balance=b)
                                                                      for s, x, b in rest]


def tracking_sequence(c: PIController, steps: int = 20) -> list[float]:
    """Lambda over a run whose ParamBPT rises to S*'s level (tracking from step 13) and then wanders about it."""
    out = []
    for i in range(steps):
        d, p, sens = 9.0 + 0.3 * math.sin(i), 0.08 * i if i < 13 else 1.0 + 0.05 * math.cos(i), 0.2 + 0.01 * i
        out.append(c.update(p / (d + p), parts=(d, p), balance=(0.3, 1.0 if p else 0.0, sens if p else 0.0)))
    return out


@pytest.mark.parametrize("memory", ["lambda", "deficit"])
def test_restoring_plant_with_a_vanishing_rate_plans_as_the_integrator(memory):
    integrator = tracking_sequence(horizon_law(momentum=0.9, horizon_memory=memory))
    restoring = tracking_sequence(horizon_law(momentum=0.9, horizon_memory=memory, horizon_plant="restoring",
                                              restoring_exponent=1e-12))
    assert restoring == pytest.approx(integrator, rel=1e-6)


def test_restoring_plan_without_momentum_counts_what_relaxes_back():
    # momentum 0: held at x, P_k - P_0 = d * (1 - (1 - a)^k) / a with d = g * (centre - x), g = sensitivity / ln2, so
    # P_H = P* needs x = centre - a * (P* - P_0) / (g * (1 - (1 - a)^H)), a = gamma * centre * g / P_0
    c = horizon_law(momentum=0.0, horizon_steps=4.0, feedforward="balance", horizon_plant="restoring",
                    restoring_exponent=0.5, start_band=0.5)
    c.update(0.0, balance=(0.0, 0.0, 0.0), parts=(9.0, 0.0))
    lam = c.update(0.8 / 9.8, balance=(0.5, 1.0, 0.2), parts=(9.0, 0.8))  # P* = 1, P_0 = 0.8, centre 0.5
    g = 0.2 / math.log(2.0)
    a = 0.5 * 0.5 * g / 0.8
    assert c.tracking
    assert lam == pytest.approx(0.5 - a * (1.0 - 0.8) / (g * (1.0 - (1.0 - a) ** 4)), rel=1e-12)
    integrator = 0.5 - (1.0 - 0.8) / (g * 4.0)
    assert lam < integrator  # part of what lambda adds relaxes back: the plan must go further


def test_horizon_approach_needs_data_smoothing_and_a_horizon_of_at_least_one_step():
    with pytest.raises(ValueError, match="needs smoothing 'data'"):
        PIConfig(law="balance", approach="horizon", smoothing="ratio")
    with pytest.raises(ValueError, match="horizon_steps must be"):
        PIConfig(law="balance", approach="horizon", horizon_steps=0.5)
    with pytest.raises(ValueError, match="horizon_memory must be"):
        PIConfig(law="balance", approach="horizon", horizon_memory="centre")
    with pytest.raises(ValueError, match="horizon_plant must be"):
        PIConfig(law="balance", approach="horizon", horizon_plant="lag")
    with pytest.raises(ValueError, match="restoring_exponent must be"):
        PIConfig(law="balance", approach="horizon", restoring_exponent=0.0)


@pytest.mark.parametrize("lambda_init", [1e-3, 1.0, 1e3])
def test_horizon_approach_starts_at_lambda_min_whatever_lambda_init(lambda_init):
    # step 1 has no learned change, so its penalty has no gradient and its sensitivity is 0: no lambda slows S's rise
    c = horizon_law(lambda_init=lambda_init)
    assert c.update(0.0, balance=(0.0, 0.0, 0.0), parts=(9.0, 0.0)) == pytest.approx(1e-6, rel=1e-12)


def test_tracking_alpha_takes_over_the_growth_estimates_rate_once_tracking():
    # lambda held at the balance, 0.2 (no P, no I, no momentum): each step's reading is 0.2 + ln2 * growth, averaged
    # at growth_alpha 0.5 until S_hat comes near S*, at tracking_alpha 0.1 from the next reading on
    c = PIController(PIConfig(smoothing="data", law="balance", target_s=0.1, lambda_init=0.2, lambda_min=1e-6,
                              lambda_max=1e3, ema_alpha=1.0, kp=0.0, ki=0.0, lead_steps=0.0, momentum=0.0,
                              feedforward="balance", growth_alpha=0.5, tracking_alpha=0.1))
    for s, param in ((0.0, 0.0), (0.01, 0.1), (0.05, 0.5), (0.1, 1.0), (0.1, 1.0)):
        c.update(s, balance=(0.2, 1.0, 1.0 if param else 0.0), parts=(9.0, param))
    ln2 = math.log(2.0)
    before_tracking = 0.5 * (0.2 + ln2 * 0.4) + 0.5 * (0.2 + ln2 * 0.5)
    assert c.lambda_growth == pytest.approx(0.9 * before_tracking + 0.1 * 0.2, rel=1e-12)


def test_settle_steps_below_one_is_refused():
    with pytest.raises(ValueError, match="settle_steps"):
        PIConfig(law="balance", settle_steps=0)


@pytest.mark.parametrize("break_at", [None, 6])
def test_settle_steps_hold_the_fast_rate_until_s_hat_has_held_the_band_that_long(break_at):
    # as above, with settle_steps 3: S_hat enters the band (0.1 +- 10%) at step 4, so readings keep growth_alpha 0.5
    # through step 5 and tracking_alpha 0.1 applies from step 6; a step out of the band (S_hat 0.05 at step 6) restarts
    # the count, so the fast rate then lasts to step 8
    c = PIController(PIConfig(smoothing="data", law="balance", target_s=0.1, lambda_init=0.2, lambda_min=1e-6,
                              lambda_max=1e3, ema_alpha=1.0, kp=0.0, ki=0.0, lead_steps=0.0, momentum=0.0,
                              feedforward="balance", growth_alpha=0.5, tracking_alpha=0.1, settle_steps=3))
    params = [0.0, 0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    if break_at:
        params[break_at - 1] = 0.5
    ln2, expected, settled_at = math.log(2.0), None, []
    for step, param in enumerate(params, start=1):
        c.update(param / (9.0 + param), balance=(0.2, 1.0, 1.0 if param else 0.0), parts=(9.0, param))
        if step >= 3:  # each step from the third reads 0.2 + ln2 * (this step's ParamBPT - the last one's)
            reading = 0.2 + ln2 * (param - params[step - 2])
            rate = 0.1 if c.settled else 0.5  # the step that completes the run already reads at the slow rate
            expected = reading if expected is None else (1 - rate) * expected + rate * reading
            assert c.lambda_growth == pytest.approx(expected, rel=1e-12), step
        if c.settled and not settled_at:
            settled_at.append(step)
    assert settled_at == [9 if break_at else 6]


@pytest.mark.parametrize("floor,held", [(None, []), ("start", [2, 3]), ("tracking", [4, 5])])
def test_balance_floor_holds_the_centre_at_the_balance_until_settled(floor, held):
    # lambda starts at the balance, 0.3, and follows the growth estimate, which at sensitivity 100 reads about the lambda
    # applied; from step 2 the balance reads 0.8. S_hat comes near S* (tracking) at step 4 and has held the band 3 steps
    # (settled) at step 6. Floored, lambda is the balance from the first step ("start") or from tracking ("tracking")
    # until settled; otherwise, and after, it is the growth estimate itself
    c = PIController(PIConfig(smoothing="data", law="balance", target_s=0.1, lambda_init=0.3, lambda_min=1e-6,
                              lambda_max=1e3, ema_alpha=1.0, kp=0.0, ki=0.0, lead_steps=0.0, momentum=0.0,
                              feedforward="growth", growth_alpha=1.0, tracking_alpha=1.0, settle_steps=3,
                              start_band=0.1, balance_floor=floor))
    at_balance = []
    for k, param in enumerate([0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.001, 1.002, 1.003, 1.004]):
        lam = c.update(param / (9.0 + param), balance=(0.3 if k < 2 else 0.8, 1.0, 100.0), parts=(9.0, param))
        assert c.tracking == (k >= 4) and c.settled == (k >= 6)
        if k >= 1:
            if lam != pytest.approx(c.lambda_growth, rel=1e-12):
                assert lam == pytest.approx(0.8, rel=1e-12) and c.lambda_growth < 0.8
                at_balance.append(k)
    assert at_balance == held


@pytest.mark.parametrize("bad", [{"feedforward": "balance", "balance_floor": "start"}, {"balance_floor": "always"}])
def test_balance_floor_settings_are_checked(bad):
    with pytest.raises(ValueError, match="balance_floor"):
        PIConfig(law="balance", **{"feedforward": "growth", **bad})


def test_a_checkpoint_taken_mid_count_resumes_the_settle_count():
    config = PIConfig(smoothing="data", law="balance", target_s=0.1, lambda_init=0.2, lambda_min=1e-6, lambda_max=1e3,
                      ema_alpha=1.0, kp=0.0, ki=0.0, lead_steps=0.0, momentum=0.0, feedforward="balance",
                      growth_alpha=0.5, tracking_alpha=0.1, settle_steps=3)
    params = [0.0, 0.1, 0.5, 1.0, 1.0, 1.05, 0.95, 1.0, 1.05, 1.0]  # from step 4 on, S_hat within 0.1 +- 10%
    a = PIController(config)

    def step(c: PIController, param: float) -> tuple[float, float | None, bool]:
        lam = c.update(param / (9.0 + param), balance=(0.2, 1.0, 1.0 if param else 0.0), parts=(9.0, param))
        return lam, c.lambda_growth, c.settled

    for param in params[:5]:  # S_hat in the band at steps 4 and 5: two of the three steps counted
        step(a, param)
    assert a.in_band_run == 2 and not a.settled
    b = PIController(config)
    b.load_state_dict(a.state_dict())
    resumed = [step(b, x) for x in params[5:]]
    assert [step(a, x) for x in params[5:]] == resumed and resumed[0][2]  # the count went on: settled at step 6


def test_horizon_approach_stops_integrating_while_its_own_lambda_is_pinned_at_a_bound():
    # S twice S*: the plan asks for lambda 0.5 + ln2 * 1.25 / (10 * 0.1) = 1.37, above lambda_max 1, so the integral
    # must hold still (the lead law's own formula, 0.5 * exp(ki * e) = 0.75, would sit inside the bounds)
    c = horizon_law(momentum=0.0, ki=0.5, lambda_max=1.0)
    c.update(0.0, balance=(0.0, 0.0, 0.0), parts=(9.0, 0.0))
    lam = c.update(0.2, balance=(0.5, 1.0, 0.1), parts=(9.0, 2.25))
    assert c.tracking and lam == pytest.approx(1.0) and c.integral == 0.0


@pytest.mark.parametrize("law, balance", [("balance", (0.3, 1.0, 1e-6)), ("bumpless", None)])
def test_a_lambda_held_at_its_floor_is_the_floor_exactly_and_counted_there(law, balance):
    """exp(log(1e-4)) is 1.0000000000000009e-4: a law that clamps in log space must still land on the bound itself,
    or the run's record shows lambda at its floor for 0% of the steps it spent there."""
    extra = {"feedforward": "growth", "growth_alpha": 0.5, "approach": "horizon", "kp": 1.0, "ki": 0.0} if law == "balance" else {}
    c = PIController(PIConfig(law=law, target_s=0.05, lambda_init=1e-4, smoothing="data", momentum=0.0, **extra))
    for _ in range(3):
        lam = c.update(1e-4, balance=balance, parts=(5.0, 5e-4)) if balance else c.update(1e-4, parts=(5.0, 5e-4))
        assert lam == c.config.lambda_min and c.at_bound == "min"
