"""PI control of the regularization weight lambda so that S tracks a target S*.

Four update laws share one state (lambda, integral, S_hat, step):

* ``balance`` (measured in docs/method.md): lambda is set around the lambda at which the penalty's gradient cancels
  the data's (the loop measures both every step: lambda_bal = -<g_d, g_p> / ||g_p||^2, each smoothed
  by ema_alpha, and once tracking by tracking_alpha),
      log(lambda) = log(lambda_bal) + kp * clip(e_ahead) + ki * sum(e),   e the log-odds error below (clipped at
  +-error_clip), e_ahead that of S_hat extrapolated lead_steps on while it rises
  At lambda_bal the learned change stops growing, so S holds where it is; kp * c lets S rise freely while far below
  S* (lambda << lambda_bal) and makes S approach S* at a rate proportional to the error. The integral (from the
  moment S_hat first comes within start_band of S*) removes what the gradient balance misses. Nothing is anchored
  at lambda_init: it stands in for lambda_bal only until the change is non-zero (after the first step, where the
  penalty has no gradient whatever lambda is). Once tracking, the balance can be averaged at a slower tracking_alpha
  (opt-in: lambda* then drifts slowly, and on the tiny harness the fast average's noise was most of lambda's motion;
  elsewhere it settled later), or with settle_steps only once S_hat has held the band that many steps in a row (on
  SmolLM2 lambda* still climbs fast while S first closes in); where the measured pull turns inward (lambda_bal <= 0)
  the last positive lambda_bal stands in. balance_margin (opt-in) multiplies lambda_bal: the minibatch noise grows
  the change at any lambda, a second-order growth the first-order balance leaves out, so lambda* lies above
  lambda_bal (measured 1.1-1.5x) and without a margin the integral alone must supply that factor, which at ki 0.04
  takes tens of steps.
  ``feedforward: growth`` (opt-in) measures that lambda instead of modelling it: ParamBPT is exact each step, so its
  growth over a step is known, and the loop also reports the step's penalty sensitivity (lr * clip * <g_p, D g_p>,
  D AdamW's per-entry step scale: how much one unit of lambda, held, lowers the penalty per step). Then
      lambda_growth = lambda_avg + ln2 * (ParamBPT - pace * ParamBPT_prev) / sensitivity,
  lambda_avg the AdamW-momentum average of the lambdas that step answered and pace the smoothed DataBPT's ratio over
  the step, is the lambda at which S would have held still, whatever drove the growth (the data's pull, minibatch
  noise, Adam's scaling, weight decay). While S first closes in, that estimate can read below the gradient balance,
  which noise only adds to; `balance_floor` (opt-in) takes the larger of the two until S has settled.
  ``approach: horizon`` (opt-in) replaces kp and the lead with that same growth model run forward: the lambda the
  optimizer acts on is its momentum's average, so a brake keeps braking ~1/(1-b) steps after it is released (the
  lead law's ring on SmolLM2). The next lambda is the one that, held for horizon_steps steps through the momentum,
  brings ParamBPT to S*/(1-S*) * DataBPT_hat at the end of them (PIController._horizon_lambda): far below the target
  it is lambda_min, and it rises to the centre as ParamBPT closes in, already counting the brake the momentum carries.
  Once S_hat has come near S*, the centre is multiplied by exp(kp * e) (kp 0: the growth model alone), or by
  exp(kp * e_ahead) with horizon_kp_reads "heading" (opt-in).
  horizon_memory "deficit" (opt-in) has the momentum carry, once tracking, each step's lambda against the centre of its
  step, not the lambda alone, so the centre's step-to-step noise passes into lambda about once instead of
  H / (H - carried) times.
  horizon_plant "restoring" (opt-in) adds, once tracking, ParamBPT's relaxation to its own equilibrium to the plan's
  growth model (PIController._restoring_lambda): the penalty's pull grows with the change it pulls on, which the twin
  runs of bench.sensitivity_twin measured (docs/method.md).

* ``bumpless`` (opt-in, measured in docs/method.md): a velocity-form PI on log(lambda) on the log-odds
  of S, e = ln(odds(S_hat) / odds(S*)), odds(S) = S / (1 - S) = ParamBPT / DataBPT, c = clip(e, +-error_clip):
      d log(lambda) = kp * (e - e_prev) + (ki + schedule_gain * |c|) * c          (tracking)
  Until S_hat first comes within start_band of S*, S is rising from 0 whatever lambda is, so lambda is
  held, and only lowered, by start_gain * clip(e_ahead), while S is not on course to reach S* within
  start_horizon steps at its current rate: e_ahead = e + start_horizon * (e - e_prev) < 0. Tracking then
  starts from the lambda of that moment, so lambda_init is where a search starts, not an anchor the
  integral must undo. The log-odds do not saturate as S nears 1 (small data sets), where ln(S) would.

* ``pi`` (default): position-form PI on log(lambda) with a logarithmic error,
      e = log(S_hat / S*),   log(lambda) = log(lambda_init) + kp * e + ki * sum(e)
  With kp = 1 the proportional part alone makes lambda proportional to S_hat, the
  integral removes the remaining offset. Anti-windup is conditional integration: the
  error is not accumulated while lambda is pinned at a bound and the error pushes further
  into it, nor while |S_hat - S*| is inside the deadband. The integrated error is clipped
  to +-integral_error_clip: S starts at exactly 0 (no learned change yet), and the large
  log-errors of that start-up transient must not wind the integral up.
* ``guide``: the public reference's velocity law, kept for comparisons only,
      I = clamp(leak * I + ki * e, +-integral_limit),  lambda = clip(lambda * exp(kp * e + I))
  with e = S_hat - S*, applied when |e| > deadband. It compounds the P term into lambda
  (a double integrator) and oscillates between the bounds on a real gradient.

S above its target raises lambda (more regularization lowers ParamBPT, hence S).

What the laws read is S_hat, a smoothed S. `smoothing: ratio` is an EMA of S itself (rate ema_alpha). It lags
S by about 1/ema_alpha steps, and while the learned change grows fast from zero that lag is most of the error
(docs/method.md). `smoothing: data` smooths only DataBPT, the minibatch estimate that is noisy, and takes
ParamBPT as it is: it is a function of the weights, exact each step, so S_hat = ParamBPT / (DataBPT_hat + ParamBPT)
has no lag where S moves and the same noise where it does not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from scu.core.bits import info_ratio
from scu.core.telemetry import Action, StepTelemetry

MAX_LOG_ERROR = 10.0  # |log(S_hat/S*)| cap, so S = 0 at step 0 cannot produce -inf
SETTLE_BAND = 0.1  # settle_steps: the band S_hat must hold, the start-up criterion's (issue 18)
ODDS_FLOOR = 1e-9  # S is kept in [1e-9, 1 - 1e-9] for its log-odds (S = 0 exactly at step 0)


def log_odds_error(s: float, target: float) -> float:
    """ln(odds(S) / odds(S*)): ln(S/S*) while S is small, and unbounded as S nears 1, unlike ln(S/S*)."""
    s = min(max(s, ODDS_FLOOR), 1.0 - ODDS_FLOOR)
    return math.log(s / (1.0 - s)) - math.log(target / (1.0 - target))


@dataclass
class PIConfig:
    target_s: float = 0.05
    kp: float = 2.0
    ki: float = 0.04
    deadband: float = 0.0
    lambda_init: float = 1.0
    lambda_min: float = 1e-4
    lambda_max: float = 10.0
    ema_alpha: float = 0.1
    smoothing: Literal["data", "ratio"] = "data"  # what ema_alpha smooths: DataBPT only, or S itself (module docstring)
    integral_error_clip: float = 0.5
    law: Literal["pi", "bumpless", "balance", "guide"] = "pi"
    error_clip: float = 3.0  # bumpless and balance laws: largest |e| acted on
    start_horizon: float = 20.0  # bumpless law: steps ahead that S must be on course to reach S* for lambda to be held
    start_gain: float = 0.15  # bumpless law: d log(lambda) per unit of predicted shortfall, before the first crossing
    start_band: float = 0.1  # bumpless law: tracking starts once S_hat >= (1 - start_band) * S*
    schedule_gain: float = 0.05  # bumpless law: integral rate added per unit of |e| once tracking
    lead_steps: float = 3.0  # balance law: the proportional part acts on where a rising S_hat is heading this many steps on
    tracking_alpha: float | None = None  # balance law: EMA rate of the balance once tracking (None: ema_alpha)
    # balance law: tracking_alpha takes over only once S_hat has held within SETTLE_BAND of S* this many steps in a row
    # (None: from the start of tracking). While S first closes in, lambda* can move fast (SmolLM2 18k: ~1% a step as
    # the slice is memorised), and a slow centre lags it; once settled, the slow rate keeps the estimate's noise out.
    settle_steps: int | None = None
    balance_margin: float = 1.0  # balance law: lambda is set around this multiple of lambda_bal (module docstring)
    # balance law: what sets lambda's centre, the gradient balance or the lambda at which the measured growth of
    # ParamBPT would stop (module docstring); growth needs the step's penalty sensitivity (AdamW, scu train)
    feedforward: Literal["balance", "growth"] = "balance"
    # feedforward growth: the centre is at least the gradient balance until settled, from the first step ("start") or
    # from tracking ("tracking"); None: no floor. While S first rises the growth estimate read below the balance in
    # every measured run, and on SmolLM2 the low centre let S overshoot (docs/method.md, "The balance as a floor")
    balance_floor: Literal["start", "tracking"] | None = None
    momentum: float = 0.9  # AdamW's beta1: the growth measured in a step answers the momentum's average of lambda
    growth_alpha: float | None = None  # EMA rate of lambda_growth's two parts (None: the balance's; tracking_alpha once tracking)
    # balance law: how lambda moves about its centre: "lead" (kp on the log-odds error of where S is heading) or
    # "horizon" (the lambda that, held horizon_steps through AdamW's momentum, brings ParamBPT to its target; module docstring)
    approach: Literal["lead", "horizon"] = "lead"
    horizon_steps: float = 10.0
    # approach horizon: what AdamW's momentum is taken to carry into the plan: the lambdas applied ("lambda"), or
    # their deficit against the centre of their own step ("deficit"; module docstring)
    horizon_memory: Literal["lambda", "deficit"] = "lambda"
    # approach horizon: the error kp reads once tracking: S_hat's ("error") or where a rising S_hat is heading
    # lead_steps on ("heading"), so that S rising through the start of the band does not release the brake
    horizon_kp_reads: Literal["error", "heading"] = "error"
    # approach horizon, once tracking: ParamBPT integrates the growth model ("integrator"), or also relaxes to its own
    # equilibrium at a = restoring_exponent * lambda * sensitivity / (ln2 * ParamBPT) per step ("restoring"): the
    # penalty's pull grows with the change it pulls on (measured by bench.sensitivity_twin: exponent 0.86-1.34 on the
    # tiny harness at 16k, 0.44-0.80 on SmolLM2); the plan runs round(horizon_steps) steps
    horizon_plant: Literal["integrator", "restoring"] = "integrator"
    restoring_exponent: float = 1.0
    leak: float = 0.995  # guide law only
    integral_limit: float = 0.2  # guide law only

    def __post_init__(self) -> None:
        if not 0.0 < self.target_s < 1.0:
            raise ValueError(f"target_s must be in (0, 1), got {self.target_s}")
        if not 0.0 <= self.lambda_min <= self.lambda_max:
            raise ValueError(f"need 0 <= lambda_min <= lambda_max, got [{self.lambda_min}, {self.lambda_max}]")
        if self.lambda_min == 0.0 and self.lambda_max > 0.0:
            raise ValueError("lambda_min must be > 0 when lambda is controlled (log domain); fix lambda with lambda_min = lambda_max")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if self.tracking_alpha is not None and not 0.0 < self.tracking_alpha <= 1.0:
            raise ValueError(f"tracking_alpha must be in (0, 1] or None, got {self.tracking_alpha}")
        if self.settle_steps is not None and self.settle_steps < 1:
            raise ValueError(f"settle_steps must be >= 1 or None, got {self.settle_steps}")
        if not self.balance_margin > 0.0:
            raise ValueError(f"balance_margin must be > 0, got {self.balance_margin}")
        if self.feedforward not in ("balance", "growth"):
            raise ValueError(f"feedforward must be 'balance' or 'growth', got {self.feedforward!r}")
        if self.balance_floor not in (None, "start", "tracking"):
            raise ValueError(f"balance_floor must be 'start', 'tracking' or None, got {self.balance_floor!r}")
        if self.balance_floor is not None and self.feedforward != "growth":
            raise ValueError("balance_floor floors the growth estimate; set feedforward 'growth', or drop balance_floor")
        if self.approach not in ("lead", "horizon"):
            raise ValueError(f"approach must be 'lead' or 'horizon', got {self.approach!r}")
        if self.approach == "horizon" and self.smoothing != "data":
            raise ValueError("approach 'horizon' aims at ParamBPT's target, S*/(1-S*) times the smoothed DataBPT: it needs smoothing 'data'")
        if self.horizon_memory not in ("lambda", "deficit"):
            raise ValueError(f"horizon_memory must be 'lambda' or 'deficit', got {self.horizon_memory!r}")
        if self.horizon_kp_reads not in ("error", "heading"):
            raise ValueError(f"horizon_kp_reads must be 'error' or 'heading', got {self.horizon_kp_reads!r}")
        if self.horizon_plant not in ("integrator", "restoring"):
            raise ValueError(f"horizon_plant must be 'integrator' or 'restoring', got {self.horizon_plant!r}")
        if not self.restoring_exponent > 0.0:
            raise ValueError(f"restoring_exponent must be > 0, got {self.restoring_exponent}")
        if not self.horizon_steps >= 1.0:
            raise ValueError(f"horizon_steps must be >= 1, got {self.horizon_steps}")
        if self.growth_alpha is not None and not 0.0 < self.growth_alpha <= 1.0:
            raise ValueError(f"growth_alpha must be in (0, 1] or None, got {self.growth_alpha}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.smoothing not in ("data", "ratio"):
            raise ValueError(f"smoothing must be 'data' or 'ratio', got {self.smoothing!r}")

    @property
    def lambda_start(self) -> float:
        """The lambda of the first step: lambda_init inside the bounds."""
        return min(max(self.lambda_init, self.lambda_min), self.lambda_max)


class PIController:
    """Updates lambda once per optimizer step from that step's complete S."""

    def __init__(self, config: PIConfig) -> None:
        self.config = config
        self.lam = config.lambda_start
        self.integral = 0.0
        self.s_hat: float | None = None
        self.data_hat: float | None = None  # smoothing "data": the smoothed DataBPT
        self.step_count = 0
        self.tracking = False  # bumpless law: S has reached S* at least once
        self.in_band_run = 0  # balance law: steps in a row S_hat has held within SETTLE_BAND of S*
        self.settled = False  # balance law: that run has reached settle_steps (tracking_alpha applies from then on)
        self.prev_error: float | None = None  # bumpless law: last step's log-odds error
        self.prev_s_hat: float | None = None  # balance law: last step's S_hat
        self.pull = 0.0  # balance law: smoothed -<g_d, g_p> and ||g_p||^2 (scu.core.telemetry.StepTelemetry)
        self.grad_sq = 0.0
        self.held_balance: float | None = None  # balance law: the last positive feedforward estimate
        self.lam_momentum = 0.0  # balance law: AdamW-momentum average of the lambdas applied (before bias correction)
        self.lam_steps = 0
        self.centre: float | None = None  # approach horizon: the centre of the last plan, and its momentum average
        self.centre_momentum = 0.0
        # last step's (ParamBPT, sensitivity, averaged lambda, smoothed DataBPT or 0)
        self.growth_point: tuple[float, float, float, float] | None = None
        self.growth_num = 0.0  # smoothed (averaged lambda * sensitivity + growth of the penalty); lambda_growth = num / den
        self.growth_den = 0.0

    @property
    def fixed(self) -> bool:
        return self.config.lambda_min == self.config.lambda_max

    @property
    def at_bound(self) -> Literal["min", "max"] | None:
        if self.fixed:
            return None
        if self.lam <= self.config.lambda_min:
            return "min"
        if self.lam >= self.config.lambda_max:
            return "max"
        return None

    @property
    def lambda_balance(self) -> float | None:
        """Balance law: the smoothed lambda at which the penalty's gradient cancels the data's (None: not measured)."""
        return self.pull / self.grad_sq if self.grad_sq > 0.0 else None

    @property
    def lambda_average(self) -> float:
        """Balance law: the AdamW-momentum average of the lambdas applied so far (bias-corrected as Adam's is)."""
        steps, b = self.lam_steps, self.config.momentum
        return self.lam_momentum / (1.0 - b ** steps) if steps else self.lam

    @property
    def centre_average(self) -> float:
        """Approach horizon: the AdamW-momentum average of the centres the applied lambdas were planned around."""
        steps, b = self.lam_steps, self.config.momentum
        return self.centre_momentum / (1.0 - b ** steps) if steps else (self.centre or 0.0)

    @property
    def lambda_growth(self) -> float | None:
        """Balance law: the smoothed lambda at which the measured growth of ParamBPT would stop (None: not measured)."""
        return self.growth_num / self.growth_den if self.growth_den > 0.0 else None

    def update(
        self, s: float, target_s: float | None = None, balance: tuple[float, float, float | None] | None = None,
        parts: tuple[float, float] | None = None,
    ) -> float:
        """Feed one step's measured S (and the S* in force, default the configured one); return the next lambda.

        `parts` is the step's (DataBPT, ParamBPT), which `smoothing: data` needs; `balance` is the step's gradient
        balance (-<g_d, g_p>, ||g_p||^2[, penalty sensitivity]), which the `balance` law needs (the sensitivity for
        `feedforward: growth`)."""
        if not math.isfinite(s):
            raise ValueError(f"S must be finite, got {s}")
        c = self.config
        target = c.target_s if target_s is None else target_s
        self.step_count += 1
        self._smooth(s, parts)
        if self.fixed:
            self.lam = c.lambda_min
        elif c.law == "guide":
            self._guide_update(target)
        elif c.law == "bumpless":
            self._bumpless_update(target)
        elif c.law == "balance":
            if balance is None:
                raise ValueError("law 'balance' needs the step's gradient balance (data_pull, penalty_grad_sq)")
            pull, grad_sq, *sensitivity = balance
            self._balance_update(target, pull, grad_sq, sensitivity[0] if sensitivity else None,
                                 None if parts is None else parts[1])
        else:
            self._pi_update(target)
        return self.lam

    def _ema(self, previous: float | None, value: float, alpha: float | None = None) -> float:
        a = self.config.ema_alpha if alpha is None else alpha
        return value if previous is None else (1.0 - a) * previous + a * value

    def _smooth(self, s: float, parts: tuple[float, float] | None) -> None:
        if self.config.smoothing == "ratio":
            self.s_hat = self._ema(self.s_hat, s)
            return
        if parts is None:
            raise ValueError("smoothing 'data' needs the step's (DataBPT, ParamBPT); pass parts= or use smoothing 'ratio'")
        data_bpt, param_bpt = parts
        if not (math.isfinite(data_bpt) and math.isfinite(param_bpt)):
            raise ValueError(f"DataBPT and ParamBPT must be finite, got {data_bpt}, {param_bpt}")
        self.data_hat = self._ema(self.data_hat, data_bpt)
        self.s_hat = info_ratio(self.data_hat, param_bpt)

    def _pi_update(self, target: float) -> None:
        c = self.config
        e = math.log(max(self.s_hat, target * math.exp(-MAX_LOG_ERROR)) / target)
        e = min(e, MAX_LOG_ERROR)
        log_min, log_max = math.log(c.lambda_min), math.log(c.lambda_max)
        base = math.log(c.lambda_init) + c.kp * e
        candidate = self.integral + min(max(e, -c.integral_error_clip), c.integral_error_clip)
        log_lam = base + c.ki * candidate
        in_deadband = abs(self.s_hat - target) <= c.deadband
        winds_up = (log_lam > log_max and e > 0) or (log_lam < log_min and e < 0)
        if not (in_deadband or winds_up):
            self.integral = candidate
        self._set_log_lambda(base + c.ki * self.integral)

    def _set_log_lambda(self, log_lam: float) -> None:
        """lambda = exp(log_lam) within its bounds, and exactly the bound where clamped: exp(log(1e-4)) is
        1.0000000000000009e-4, which at_bound would not count as the floor."""
        c = self.config
        log_min, log_max = math.log(c.lambda_min), math.log(c.lambda_max)
        self.lam = c.lambda_min if log_lam <= log_min else c.lambda_max if log_lam >= log_max else math.exp(log_lam)

    def _bumpless_update(self, target: float) -> None:
        c = self.config
        e = log_odds_error(self.s_hat, target)
        change = None if self.prev_error is None else e - self.prev_error
        self.prev_error = e
        if change is None:  # one point is no trend yet
            return
        if not self.tracking and self.s_hat >= (1.0 - c.start_band) * target:
            # S is near S*: the PI starts from the lambda of this moment. Not at the crossing itself: with
            # lambda at lambda*, S approaches S* from below and crosses only after a long tail, or never.
            self.tracking = True
        clipped = min(max(e, -c.error_clip), c.error_clip)
        if self.tracking:  # the integral rate grows with |e|, so a start far below lambda* catches up fast
            step = c.kp * change + (c.ki + c.schedule_gain * abs(clipped)) * clipped
        else:
            heading = e + c.start_horizon * change  # where S is heading, start_horizon steps on
            step = c.start_gain * max(heading, -c.error_clip) if heading < 0 else 0.0
        self._set_log_lambda(math.log(self.lam) + step)

    def _balance_update(
        self, target: float, pull: float, grad_sq: float, sensitivity: float | None, param_bpt: float | None
    ) -> None:
        c = self.config
        # once S holds S*, lambda* moves slowly and the estimates' step-to-step noise is what remains
        self.in_band_run = self.in_band_run + 1 if abs(self.s_hat - target) <= SETTLE_BAND * target else 0
        self.settled = self.settled or (self.tracking and self.in_band_run >= (c.settle_steps or 0))
        a = c.tracking_alpha if self.settled else None
        if math.isfinite(pull) and math.isfinite(grad_sq) and grad_sq > 0.0:  # 0 while there is no learned change
            first = self.grad_sq == 0.0
            self.pull = self._ema(None if first else self.pull, pull, a)
            self.grad_sq = self._ema(None if first else self.grad_sq, grad_sq, a)
        # growth_alpha sets the growth estimate's rate until settled; a tracking_alpha, set, takes over from then on
        growth_rate = a if self.settled and c.tracking_alpha is not None else c.growth_alpha or a
        counted = math.isfinite(grad_sq) and grad_sq > 0.0  # the step's lambda acted, so the momentum holds it
        self._measure_growth(sensitivity, param_bpt, growth_rate, counted)
        log_min, log_max = math.log(c.lambda_min), math.log(c.lambda_max)
        # growth needs two measured steps; until then the gradient balance (measured from the second step) stands
        # in, not lambda_init, which from a start 1000x too high held S back (SmolLM2 18k: settled at 45; now 34)
        growth = self.lambda_growth if c.feedforward == "growth" else None
        balance = self.lambda_balance if growth is None else growth
        # S rising from 0 is not an offset of the balance: the integral starts once S has first come near S*
        self.tracking = self.tracking or self.s_hat >= (1.0 - c.start_band) * target
        floored = c.balance_floor == "start" or (c.balance_floor == "tracking" and self.tracking)
        if floored and growth is not None and not self.settled and self.lambda_balance is not None:
            balance = max(growth, self.lambda_balance)
        if balance is not None and balance > 0.0:
            self.held_balance = balance
        # the data's measured pull can turn inward (<= 0) while Adam still grows the change: the last positive
        # balance is kept, not lambda_min, which let S run to 3.7x S* (docs/method.md); lambda_init before any
        feedforward = (math.log(c.balance_margin * self.held_balance) if self.held_balance is not None
                       else math.log(c.lambda_start))
        # only a rise is extrapolated: the lead brakes S before it crosses S*, and a fall read ahead would release
        # that brake at once (measured on SmolLM2 with smoothing "data": lambda 1.3 -> 0.002 in two steps)
        rise = max(0.0, self.s_hat - (self.prev_s_hat if self.prev_s_hat is not None else self.s_hat))
        heading = self.s_hat + c.lead_steps * rise
        self.prev_s_hat = self.s_hat
        e = min(max(log_odds_error(self.s_hat, target), -c.error_clip), c.error_clip)
        # extrapolated in S, not in its log-odds: while S grows exponentially from ~0 the log-odds rise fast
        # although S is still far below S*
        ahead = min(max(log_odds_error(heading, target), -c.error_clip), c.error_clip)
        if c.approach == "horizon" and sensitivity is not None and param_bpt is not None:
            # once tracking, kp moves the centre by the log-odds error: the growth model's own correction per bit
            # of gap is as strong as its sensitivity is right, and early in a run AdamW's scale is not yet settled
            read = ahead if c.horizon_kp_reads == "heading" else e
            centre = math.exp(feedforward + (c.kp * read if self.tracking else 0.0))
            if not self.tracking:
                # until S_hat nears S* the momentum's centre is taken to be today's: the early growth estimates are
                # not trusted (tiny harness: 2.4 falling to 0.002 during the approach; counted, the plan braked
                # too hard and settled at 47-67 instead of 25-33), so both memories plan alike until tracking
                self.centre_momentum = centre * (1.0 - c.momentum ** self.lam_steps)
            elif counted:  # the lambda just applied was planned around the previous centre
                in_effect = self.centre if self.centre is not None else centre
                self.centre_momentum = c.momentum * self.centre_momentum + (1.0 - c.momentum) * in_effect
            self.centre = centre
            held = self._horizon_lambda(target, centre, param_bpt, sensitivity)
            proportional = math.log(held) if held > 0.0 else log_min
        else:
            proportional = feedforward + c.kp * ahead
        candidate = self.integral + e if self.tracking else self.integral
        log_lam = proportional + c.ki * candidate
        if not ((log_lam > log_max and e > 0) or (log_lam < log_min and e < 0)):  # conditional integration
            self.integral = candidate
        self._set_log_lambda(proportional + c.ki * self.integral)

    def _horizon_lambda(self, target: float, centre: float, param_bpt: float, sensitivity: float) -> float:
        """The lambda that, applied for the next H = horizon_steps steps, brings ParamBPT to its target
        P* = S*/(1-S*) * DataBPT_hat at the end of them, on the growth model
            P_{k+1} - P_k = sensitivity / ln2 * (centre - avg_k),   avg_k = b * avg_{k-1} + (1 - b) * lambda,
        b AdamW's momentum: the lambda the optimizer acts on is its momentum's average, so a lambda held from now
        reaches it only over ~1/(1-b) steps, and a brake applied earlier keeps braking. Summed over the horizon,
            lambda = (H * centre - carried * avg_0 - ln2 * (P* - P) / sensitivity) / (H - carried),
            carried = b * (1 - b^H) / (1 - b)
        (with b = 0: lambda = centre - ln2 * (P* - P) / (H * sensitivity)). May be <= 0: lambda as low as it goes.
        With horizon_memory "deficit" the growth is driven by the momentum's average of (centre_j - lambda_j), each
        step's lambda against the centre of its own step (the data's pull passes through the same momentum):
            lambda = centre - (carried * (avg_0 - centre_avg_0) + ln2 * (P* - P) / sensitivity) / (H - carried)
        Both agree while the centre holds still. When it moves by noise, "lambda" carries the move H / (H - carried)
        times over (2.4 at H 10) into lambda, "deficit" about once.
        With no sensitivity yet (no learned change, so the penalty has no gradient) no lambda slows the growth:
        lambda_min, whatever lambda_init was."""
        c = self.config
        b, h = c.momentum, c.horizon_steps
        carried = b * (1.0 - b ** h) / (1.0 - b)
        p_target = target / (1.0 - target) * self.data_hat
        if sensitivity <= 0.0:
            return 0.0 if param_bpt < p_target else centre
        if c.horizon_plant == "restoring" and self.tracking and param_bpt > 0.0:
            return self._restoring_lambda(p_target, centre, param_bpt, sensitivity)
        needed = math.log(2.0) * (p_target - param_bpt) / sensitivity
        if c.horizon_memory == "deficit":
            return centre - (carried * (self.lambda_average - self.centre_average) + needed) / (h - carried)
        return (h * centre - carried * self.lambda_average - needed) / (h - carried)

    def _restoring_lambda(self, p_target: float, centre: float, param_bpt: float, sensitivity: float) -> float:
        """The horizon plan on a plant that relaxes to its own equilibrium: over steps k = 1..H, with lambda held at x,
            P_k = P_{k-1} + sensitivity / ln2 * (C_k - avg_k) - a * (P_{k-1} - P_0),   a = gamma * centre * sensitivity / (ln2 * P_0)
        avg_k the momentum average of lambda (from lambda_average, moving to x) and C_k the centre (today's, or with
        the deficit memory the centres' momentum average moving to today's). The penalty's pull on P scales with the
        change it pulls on, so a P above its equilibrium falls back by itself (bench.sensitivity_twin: on SmolLM2 at
        a = 0.15-0.63 a step, which the integrator plan counts as a lasting deficit). P_H is affine in x: two runs of
        the recursion give the x with P_H = P*. a is capped at 1 (P settles within the step)."""
        c = self.config
        b, steps = c.momentum, int(round(c.horizon_steps))
        gain = sensitivity / math.log(2.0)
        restoring = min(1.0, c.restoring_exponent * centre * gain / param_bpt)

        def end(x: float) -> float:
            avg, held = self.lambda_average, self.centre_average if c.horizon_memory == "deficit" else centre
            p = param_bpt
            for _ in range(steps):
                avg, held = b * avg + (1.0 - b) * x, b * held + (1.0 - b) * centre
                p += gain * (held - avg) - restoring * (p - param_bpt)
            return p

        at_zero = end(0.0)
        return (p_target - at_zero) / (end(1.0) - at_zero)

    def _measure_growth(
        self, sensitivity: float | None, param_bpt: float | None, alpha: float | None, penalty_has_gradient: bool
    ) -> None:
        """lambda_growth = lambda_avg + ln2 * (ParamBPT - pace * ParamBPT_prev) / sensitivity, from the step before this
        one (pace: the smoothed DataBPT's ratio over that step): the lambda at which S would have held still. The
        growth of the penalty that a step measured, beyond the pace that keeps S, plus what its momentum-averaged lambda
        held back, per unit of lambda. Unlike the gradient balance it counts the growth that minibatch noise and
        AdamW's per-entry scaling cause."""
        c = self.config
        if penalty_has_gradient:  # before the change is non-zero, lambda multiplies a zero gradient: momentum holds none of it
            self.lam_steps += 1
            self.lam_momentum = c.momentum * self.lam_momentum + (1.0 - c.momentum) * self.lam  # this step's lambda
        lam_avg = self.lambda_average
        if sensitivity is None or param_bpt is None or not (math.isfinite(sensitivity) and math.isfinite(param_bpt)):
            self.growth_point = None
            return
        if self.growth_point is not None and self.growth_point[1] > 0.0:
            last_param, last_sensitivity, last_lam, last_data = self.growth_point
            # S holds where ParamBPT keeps pace with the smoothed DataBPT, not where it stops: while the data is
            # being memorised DataBPT falls, and ParamBPT must fall with it
            pace = self.data_hat / last_data if self.data_hat and last_data else 1.0
            num = last_lam * last_sensitivity + math.log(2.0) * (param_bpt - pace * last_param)
            first = self.growth_den == 0.0
            self.growth_num = self._ema(None if first else self.growth_num, num, alpha)
            self.growth_den = self._ema(None if first else self.growth_den, last_sensitivity, alpha)
        self.growth_point = (param_bpt, sensitivity, lam_avg, self.data_hat or 0.0)

    def _guide_update(self, target: float) -> None:
        c = self.config
        e = self.s_hat - target
        if abs(e) <= c.deadband:
            return
        self.integral = min(max(c.leak * self.integral + c.ki * e, -c.integral_limit), c.integral_limit)
        self.lam = min(max(self.lam * math.exp(c.kp * e + self.integral), c.lambda_min), c.lambda_max)

    def step(self, telemetry: StepTelemetry) -> Action:
        """The next lambda, toward the S* the loop holds (telemetry.target_s); S_hat, integral and bound for the record."""
        balance = None if telemetry.data_pull is None else (
            telemetry.data_pull, telemetry.penalty_grad_sq, telemetry.penalty_sensitivity)
        lam = self.update(telemetry.s, telemetry.target_s, balance, (telemetry.data_bpt, telemetry.param_bpt))
        report = {"s_hat": self.s_hat, "integral": self.integral, "at_bound": self.at_bound, "settled": self.settled}
        if self.lambda_balance is not None:
            report["lambda_balance"] = self.lambda_balance
        if self.lambda_growth is not None:
            report["lambda_growth"] = self.lambda_growth
        return Action(lam=lam, report=report)

    def state_dict(self) -> dict:
        return {"lam": self.lam, "integral": self.integral, "s_hat": self.s_hat, "data_hat": self.data_hat,
                "step": self.step_count, "tracking": self.tracking, "in_band_run": self.in_band_run,
                "settled": self.settled, "prev_error": self.prev_error, "pull": self.pull, "grad_sq": self.grad_sq,
                "prev_s_hat": self.prev_s_hat, "held_balance": self.held_balance, "lam_momentum": self.lam_momentum,
                "lam_steps": self.lam_steps, "centre": self.centre, "centre_momentum": self.centre_momentum,
                "growth_point": self.growth_point, "growth_num": self.growth_num,
                "growth_den": self.growth_den}

    def load_state_dict(self, state: dict) -> None:
        self.lam = float(state["lam"])
        self.integral = float(state["integral"])
        self.s_hat = None if state["s_hat"] is None else float(state["s_hat"])
        self.data_hat = state.get("data_hat")
        self.step_count = int(state["step"])
        self.tracking = bool(state.get("tracking", False))
        self.in_band_run = int(state.get("in_band_run", 0))
        self.settled = bool(state.get("settled", self.tracking))  # checkpoints from before settle_steps: as they ran
        self.prev_error = state.get("prev_error")
        self.prev_s_hat = state.get("prev_s_hat")
        self.pull = float(state.get("pull", 0.0))
        self.grad_sq = float(state.get("grad_sq", 0.0))
        self.held_balance = state.get("held_balance")
        self.lam_momentum = float(state.get("lam_momentum", 0.0))
        self.lam_steps = int(state.get("lam_steps", 0))
        self.centre = state.get("centre")
        self.centre_momentum = float(state.get("centre_momentum", 0.0))
        point = state.get("growth_point")
        self.growth_point = None if point is None else tuple(float(v) for v in point)
        self.growth_num = float(state.get("growth_num", 0.0))
        self.growth_den = float(state.get("growth_den", 0.0))

    def describe(self) -> dict:
        return asdict(self.config)
