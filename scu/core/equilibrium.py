"""λ-equilibrium: the step at which the controller has found the regularization the data supports.

The scaling guide's stopping rule, on telemetry only. Over the last `window` optimizer steps
(default 100, the guide's; a 100-step fine-tune can set 20 or more) all of these must hold:

1. λ is stable: the least-squares trend of λ over the window changes it by at most
   `lambda_tolerance`, relative to its mean (the guide's absolute "Δλ < 0.001" made relative,
   so it means the same at λ = 0.01 and at λ = 5). The default 0.2 admits the slow rise of λ that
   holds S* while a small data set is memorised: at 0.05 SmolLM2 stopped too late to save 30%
   (docs/benchmarks.md, "Auto-stop with room to fire");
2. S is settled: with a PI target, the window's mean S is within `s_tolerance` (5%) of S*,
   relative; with a fixed λ (`target_s: auto`), S's own least-squares trend changes it by at
   most `s_tolerance`: the balance of data and parameter bits has stopped moving;
3. the loss has plateaued or is rising: the least-squares trend of the training DataBPT
   falls by at most `loss_tolerance` of its mean per 100 steps (a rate, so a shorter window does
   not let a steadily falling loss pass as a plateau);
4. the run has trained on at least `min_epochs` epochs of tokens (default 1.5, where the epoch's size
   is known). Within the first epoch every batch is new data, so a falling training loss is the
   held-out loss falling, and a 100-step trend of it is too noisy to tell a slow fall from a plateau:
   on the tiny harness's data-rich run its standard error was 1.2-1.5% per 100 steps, above the 1%
   tolerance, and a smooth λ let the detector fire at 0.86 epochs while held-out BPT still fell. At 1
   epoch a window can still be all first-pass data: SmolLM2's data-rich runs fired there, one at a
   held-out slope of -0.504% per 100 steps against the goal's 0.5; from 1.5 the window's last half
   epoch (all of it, if shorter) is second-pass data (docs/evaluation.md, "λ-equilibrium and --auto-stop").

None of this reads the PI deadband: the detector fires just the same with deadband 0, where the
PI integrator never rests. It fires once, at the first step where all of them hold: that step's Action
reports it (`equilibrium_step`) and, with `auto_stop`, asks the loop to stop. With per-step loss
noise of relative size σ, the fitted loss trend has a standard error of about σ·sqrt(12 / window);
a noisier run needs a longer window or a looser `loss_tolerance` (docs/evaluation.md has the
measurements).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Literal, get_args

import numpy as np

from scu.core.simplified import loss_improvement
from scu.core.telemetry import Action, StepTelemetry

MIN_WINDOW = 20  # below this the fitted trends are mostly noise
AverageFrom = Literal["start", "judged"]  # EquilibriumConfig.average_from
AVERAGE_FROM = get_args(AverageFrom)


@dataclass
class EquilibriumConfig:
    """The `equilibrium:` config section."""

    auto_stop: bool = False  # end training at the equilibrium step and save the adapter there (scu train --auto-stop)
    average: bool = True  # with auto_stop, save the weights averaged over about the window (an EMA of span `window`)
    average_from: AverageFrom = "start"  # "start": the EMA runs from the first step; "judged": only over the steps judged
    window: int = 100  # steps over which all three conditions must hold (the guide's 100; shorter runs may set >= 20)
    lambda_tolerance: float = 0.2  # largest relative change of λ's trend over the window
    s_tolerance: float = 0.05  # largest |mean S - S*| / S* over the window
    loss_tolerance: float = 0.01  # largest relative loss drop per 100 steps that still counts as a plateau
    min_epochs: float = 1.5  # passes over the training data before it may fire (0: from the first full window)

    @property
    def averaging(self) -> bool:
        """Auto-stop saves averaged weights (otherwise the last step's)."""
        return self.auto_stop and self.average

    def average_weight(self, judged_steps: int) -> float | None:
        """This step's weight in the average auto-stop saves, or None: the step is not averaged.

        At λ-equilibrium the detector has judged its window stationary; with a constant learning rate the weights
        still wander around the regularized optimum, and their average estimates it better than the last step's
        (docs/evaluation.md has the measurements). "start": an EMA of span `window` from the first step, so a stop
        soon after the window first fills still carries the weights of the fast early descent (tiny harness: +1.7
        to +2.4% held-out against the last step's weights). "judged": only the steps the detector judged
        (`judged_steps` of them, this one included): their plain mean until it spans about the window, then the same
        EMA; the first judged step restarts it (weight 1)."""
        ema = 2.0 / (self.window + 1)
        if self.average_from == "start":
            return ema
        return max(1.0 / judged_steps, ema) if judged_steps > 0 else None

    def average_span(self, judged_steps: int) -> int:
        """About how many steps the saved average spans (metadata.json's weights_averaged_over)."""
        return self.window if self.average_from == "start" else min(judged_steps, self.window)

    def __post_init__(self) -> None:
        if self.window < MIN_WINDOW:
            raise ValueError(f"window must be >= {MIN_WINDOW} steps, got {self.window}")
        for name in ("lambda_tolerance", "s_tolerance", "loss_tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_epochs < math.inf:
            raise ValueError(f"min_epochs must be >= 0 and finite, got {self.min_epochs}")
        if self.average_from not in AVERAGE_FROM:
            raise ValueError(f"average_from must be one of {', '.join(AVERAGE_FROM)}, got {self.average_from!r}")


@dataclass
class Signals:
    """The three measurements over one full window."""

    step: int
    lambda_change: float  # relative change of λ's least-squares trend over the window (signed)
    s_error: float  # (mean S - S*) / S*, or with a fixed λ the relative change of S's trend over the window
    loss_change: float  # relative change of the loss trend per 100 steps (negative: falling)

    def holds(self, c: EquilibriumConfig) -> dict[str, bool]:
        return {
            "lambda_stable": abs(self.lambda_change) <= c.lambda_tolerance,
            "s_on_target": abs(self.s_error) <= c.s_tolerance,
            "loss_plateau": -self.loss_change <= c.loss_tolerance,
        }

    def describe(self) -> str:
        return (
            f"λ trend {100 * self.lambda_change:+.2f}%, S {100 * self.s_error:+.2f}% off target or trend, "
            f"loss trend {100 * self.loss_change:+.2f}% per 100 steps"
        )


class EquilibriumDetector:
    """Watches λ (as used by each step), S and its target, and the training loss; fires once.

    `tokens_per_epoch`: the training set's loss tokens, for `min_epochs` (None: not known, the condition is off)."""

    def __init__(self, config: EquilibriumConfig, tokens_per_epoch: int | None = None) -> None:
        self.config = config
        self.tokens_per_epoch = tokens_per_epoch
        self.tokens_seen = 0
        n = config.window
        self.lams: deque[float] = deque(maxlen=n)
        self.s_errors: deque[float] = deque(maxlen=n)  # S / S* - 1, or S itself when λ is fixed
        self.fixed: bool | None = None  # λ fixed (no target): S's trend is judged instead of its error
        self.losses: deque[float] = deque(maxlen=n)
        self.equilibrium_step: int | None = None
        self.signals: Signals | None = None  # the last measurement (at the equilibrium step once fired)
        self.judged_steps = 0  # steps judged since the window last (re)started: full and past min_epochs

    def step(self, telemetry: StepTelemetry) -> Action:
        """Every Action reports `judged_steps`, which the saved average reads (EquilibriumConfig.average_weight)."""
        action = self._judge(telemetry)
        action.report["judged_steps"] = self.judged_steps
        return action

    def _judge(self, telemetry: StepTelemetry) -> Action:
        if self.equilibrium_step is not None:
            return Action()
        self.tokens_seen += telemetry.tokens
        fixed = telemetry.target_s is None
        if telemetry.lam is None or fixed != self.fixed or not math.isfinite(telemetry.data_bpt):
            self._reset()  # a step without a penalty, or a switch between fixed and controlled λ, restarts the window
            self.fixed = fixed
            if telemetry.lam is None or not math.isfinite(telemetry.data_bpt):
                return Action()
        self.lams.append(float(telemetry.lam))
        self.s_errors.append(telemetry.s if fixed else telemetry.s / telemetry.target_s - 1.0)
        self.losses.append(float(telemetry.data_bpt))
        if len(self.lams) < self.config.window:
            return Action()
        self.signals = self.measure(telemetry.step)
        if not self.past_min_epochs:
            return Action()
        self.judged_steps += 1
        if not all(self.signals.holds(self.config).values()):
            return Action()
        self.equilibrium_step = telemetry.step
        reason = f"SCU Step {telemetry.step}: λ-equilibrium ({self.signals.describe()})"
        if self.config.auto_stop:
            reason += "; stopping (auto-stop)"
        return Action(stop=self.config.auto_stop, reasons=[reason], report={"equilibrium_step": telemetry.step})

    @property
    def past_min_epochs(self) -> bool:
        per_epoch = self.tokens_per_epoch
        return not per_epoch or self.tokens_seen >= self.config.min_epochs * per_epoch

    def measure(self, step: int) -> Signals:
        return Signals(
            step=step,
            lambda_change=-loss_improvement(list(self.lams)),
            s_error=-loss_improvement(list(self.s_errors)) if self.fixed else float(np.mean(self.s_errors)),
            loss_change=-loss_improvement(list(self.losses)) * 100 / max(1, len(self.losses) - 1),
        )

    def _reset(self) -> None:
        self.judged_steps = 0
        self.lams.clear()
        self.s_errors.clear()
        self.losses.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "lams": list(self.lams),
            "s_errors": list(self.s_errors),
            "losses": list(self.losses),
            "equilibrium_step": self.equilibrium_step,
            "fixed": self.fixed,
            "tokens_seen": self.tokens_seen,
            "judged_steps": self.judged_steps,
            "signals": None if self.signals is None else vars(self.signals).copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset()
        self.lams.extend(float(v) for v in state["lams"])
        self.s_errors.extend(float(v) for v in state["s_errors"])
        self.losses.extend(float(v) for v in state["losses"])
        self.equilibrium_step = None if state["equilibrium_step"] is None else int(state["equilibrium_step"])
        self.fixed = state.get("fixed")
        # a checkpoint from before min_epochs: its run's count is unknown, so the condition is taken as met
        self.tokens_seen = int(state.get("tokens_seen", self.config.min_epochs * (self.tokens_per_epoch or 0)))
        self.signals = None if state["signals"] is None else Signals(**state["signals"])
        self.judged_steps = int(state.get("judged_steps", 0))


def telemetry_from_rows(rows: Iterable[dict[str, Any]]) -> Iterable[StepTelemetry]:
    """metrics.jsonl rows as the telemetry the loop measured (for replaying a finished run)."""
    for r in rows:
        if r.get("data_bpt") is None:
            continue
        yield StepTelemetry(
            step=int(r["step"]), data_bpt=float(r["data_bpt"]), param_bpt=float(r.get("param_bpt") or 0.0),
            tokens=int(r.get("tokens") or 0), lr=float(r.get("lr") or 0.0), lam=r.get("lambda_used"),
            target_s=r.get("target_s"),
        )


def replay(rows: Iterable[dict[str, Any]], config: EquilibriumConfig | None = None,
           tokens_per_epoch: int | None = None) -> EquilibriumDetector:
    """Run the detector over a finished run's metrics rows; `.equilibrium_step` says where it would fire."""
    detector = EquilibriumDetector(config or EquilibriumConfig(), tokens_per_epoch)
    for telemetry in telemetry_from_rows(rows):
        detector.step(telemetry)
        if detector.equilibrium_step is not None:
            break
    return detector
