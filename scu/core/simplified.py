"""S-SCU: a simplified controller that reads the training dynamics and nudges LR, regularization and batch.

Every `control_frequency` optimizer steps it computes three signals over the recent history

* loss trend: the relative loss drop over the last `window` steps, from a least-squares line
  (``(fit(first) - fit(last)) / mean``), compared with `target_loss_improvement`;
* gradient stability: the coefficient of variation of the gradient norms in the window, and the
  number of spikes (norms above `spike_factor` times the window's median);
* wavelet entropy: the loss fluctuations around their linear trend over the last `entropy_window`
  steps are decomposed with ``pywt.wavedec`` (Daubechies db4 by default, periodization mode so the
  transform is orthogonal and the band energies partition the signal's energy), and the Shannon
  entropy of the relative energy per band is normalized by log(number of bands) into [0, 1].
  One band holding everything (a smooth drift, one oscillation) gives 0; energy spread evenly over
  all scales gives 1 (1/f noise: about 0.93 over 128 steps); white noise, i.e. plain minibatch noise,
  sits near 0.77 (128 steps, four db4 levels). The entropy is computed only once `entropy_window`
  steps are in, so the level and with it the meaning of the thresholds stay fixed over the run.

The first rule of `RULES` whose condition holds decides; each rule multiplies one or more of the
controller's absolute factors by a step size from the config and clamps them to their bounds, and
says why in one line ("SCU Step 150: Slow loss improvement with stable gradients - increasing LR").
No rule holding means healthy progress: nothing changes and nothing is logged.

Composition with the PI lambda controller (docs/sscu.md): `reg_factor` acts through the PI target,
S* / reg_factor (`regularized_target`), never by multiplying lambda after the PI update. A stronger
regularization therefore asks the PI loop for a smaller parameter share, which it then holds; scaling
lambda directly would only push S off target and the PI integral would undo it. Without a PI loop
(lambda fixed) the loop multiplies lambda by reg_factor.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pywt

from scu.core.telemetry import Action, StepTelemetry

MAX_TARGET_S = 0.99  # S* / reg_factor is kept inside the PI loop's valid range (0, 1)


@dataclass
class SimplifiedConfig:
    """Thresholds, step sizes and bounds of the S-SCU rules (the `sscu:` config section)."""

    enabled: bool = False  # run S-SCU in `scu train` (also: --controller simplified)
    control_frequency: int = 50  # decide every this many optimizer steps
    window: int = 50  # recent steps used for the loss trend and gradient statistics
    entropy_window: int = 128  # steps of loss for the wavelet entropy (computed once this many are in)
    wavelet: str = "db4"
    dwt_max_level: int = 4  # cap on the decomposition level (fewer when the history is short)
    # signal thresholds
    target_loss_improvement: float = 0.01  # relative loss drop per window that counts as good progress
    degradation: float = 0.01  # relative loss rise per window that counts as degradation
    plateau: float = 0.002  # |relative change| per window below this is a plateau
    cv_stable: float = 0.3  # gradient-norm CV below this (and no spike) is stable
    cv_unstable: float = 0.6  # gradient-norm CV above this is unstable
    spike_factor: float = 3.0  # a gradient norm above this times the window median is a spike
    spike_count: int = 1  # spikes in the window that trigger the spike rules
    entropy_low: float = 0.5  # below: fluctuations concentrated at one or two scales
    entropy_high: float = 0.9  # above: fluctuations spread across all scales
    # step sizes (multipliers applied by the rules)
    lr_increase: float = 1.2
    lr_decrease: float = 0.7
    reg_increase: float = 1.5
    clip_tighten: float = 0.8
    batch_grow: float = 2.0
    explore_lr_increase: float = 1.3
    explore_reg_decrease: float = 0.7
    explore_batch_shrink: float = 0.5
    # bounds on the absolute factors
    lr_factor_min: float = 0.25
    lr_factor_max: float = 4.0
    reg_factor_min: float = 0.25
    reg_factor_max: float = 4.0
    clip_factor_min: float = 0.25  # clipping is only ever tightened (factor <= 1)
    max_batch_factor: int = 4  # gradient accumulation stays within [base, base * this]

    def __post_init__(self) -> None:
        for name in ("control_frequency", "dwt_max_level", "spike_count", "max_batch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("window", "entropy_window"):
            if getattr(self, name) < 4:
                raise ValueError(f"{name} must be >= 4 steps, got {getattr(self, name)}")
        try:
            wavelet = pywt.Wavelet(self.wavelet)
        except ValueError:
            raise ValueError(
                f"unknown wavelet {self.wavelet!r}; use a discrete one from pywt.wavelist(kind='discrete'), e.g. db4"
            ) from None
        if not wavelet.orthogonal:
            raise ValueError(f"wavelet {self.wavelet!r} is not orthogonal; use a Daubechies one such as db4")
        if not self.cv_stable <= self.cv_unstable:
            raise ValueError(f"need cv_stable <= cv_unstable, got {self.cv_stable} > {self.cv_unstable}")
        if not 0.0 <= self.entropy_low <= self.entropy_high <= 1.0:
            raise ValueError(f"need 0 <= entropy_low <= entropy_high <= 1, got {self.entropy_low}, {self.entropy_high}")
        for name in ("lr_increase", "reg_increase", "batch_grow", "explore_lr_increase", "spike_factor"):
            if not getattr(self, name) > 1.0:
                raise ValueError(f"{name} must be > 1, got {getattr(self, name)}")
        for name in ("lr_decrease", "clip_tighten", "explore_reg_decrease", "explore_batch_shrink"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for lo, hi in (("lr_factor_min", "lr_factor_max"), ("reg_factor_min", "reg_factor_max")):
            if not 0.0 < getattr(self, lo) <= 1.0 <= getattr(self, hi):
                raise ValueError(f"need 0 < {lo} <= 1 <= {hi}, got {getattr(self, lo)}, {getattr(self, hi)}")
        if not 0.0 < self.clip_factor_min <= 1.0:
            raise ValueError(f"clip_factor_min must be in (0, 1], got {self.clip_factor_min}")
        for name in ("target_loss_improvement", "degradation", "plateau"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def wavelet_entropy(signal, wavelet: str = "db4", max_level: int = 4) -> tuple[float, int] | None:
    """Normalized Shannon entropy of the relative wavelet energy per band, and the level used.

    The signal's least-squares line is removed first, so the entropy describes the fluctuations
    around the trend (the trend itself is the loss-trend signal). Returns None when the signal is
    too short for one decomposition level, and (0.0, level) when nothing fluctuates (a constant or
    exactly linear signal has no energy at any scale).
    """
    x = np.asarray(signal, dtype=float)
    w = pywt.Wavelet(wavelet)
    level = min(max_level, pywt.dwt_max_level(len(x), w.dec_len))
    if level < 1:
        return None
    t = np.arange(len(x), dtype=float)
    slope, intercept = np.polyfit(t, x, 1)
    residual = x - (slope * t + intercept)
    scale = max(1.0, float(np.max(np.abs(x))))
    if float(np.sqrt(np.mean(residual**2))) <= 1e-9 * scale:
        return 0.0, level
    energies = np.array([np.sum(c**2) for c in pywt.wavedec(residual, w, mode="periodization", level=level)])
    p = energies / energies.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(level + 1)), level


def loss_improvement(losses) -> float:
    """Relative loss drop over the window from a least-squares line: positive means the loss fell."""
    y = np.asarray(losses, dtype=float)
    mean = float(np.mean(y))
    if len(y) < 2 or mean == 0.0:
        return 0.0
    slope = float(np.polyfit(np.arange(len(y), dtype=float), y, 1)[0])
    return -slope * (len(y) - 1) / abs(mean)


def regularized_target(target_s: float, reg_factor: float) -> float:
    """The PI target under S-SCU: stronger regularization (reg_factor > 1) asks for a smaller S."""
    return min(target_s / reg_factor, MAX_TARGET_S)


@dataclass
class Signals:
    """What the controller measured at one decision."""

    step: int
    improvement: float  # relative loss drop over the window (positive: improving)
    grad_cv: float | None  # coefficient of variation of the window's gradient norms (None: not measured)
    spikes: int
    entropy: float | None  # wavelet entropy in [0, 1] (None: history too short)
    levels: int  # wavelet decomposition levels used (0: not computed)
    clip_at_min: bool  # clipping already at its tightest

    def stable(self, c: SimplifiedConfig) -> bool:
        return self.grad_cv is not None and self.grad_cv < c.cv_stable and self.spikes == 0

    def unstable(self, c: SimplifiedConfig) -> bool:
        return self.grad_cv is not None and self.grad_cv > c.cv_unstable

    def complex(self, c: SimplifiedConfig) -> bool:
        return self.entropy is not None and self.entropy > c.entropy_high

    def simple(self, c: SimplifiedConfig) -> bool:
        return self.entropy is not None and self.entropy < c.entropy_low

    def spiky(self, c: SimplifiedConfig) -> bool:
        return self.spikes >= c.spike_count

    def describe(self) -> str:
        cv = "n/a" if self.grad_cv is None else f"{self.grad_cv:.2f}"
        h = "n/a" if self.entropy is None else f"{self.entropy:.2f} ({self.levels} levels)"
        return f"loss change {-100 * self.improvement:+.2f}%/window, grad CV {cv}, {self.spikes} spikes, entropy {h}"


@dataclass(frozen=True)
class Rule:
    """One row of the rule table: a situation, its condition, and the step sizes it applies."""

    name: str
    situation: str
    response: str
    when: Callable[[Signals, SimplifiedConfig], bool]
    effects: dict[str, str]  # knob ("lr", "reg", "clip", "batch") -> name of the SimplifiedConfig step size


# First match wins; no match is healthy progress (no action).
RULES: tuple[Rule, ...] = (
    Rule(
        "degrading",
        "Loss degrading with unstable gradients or high multi-scale entropy",
        "decreasing LR and strengthening regularization",
        lambda s, c: s.improvement < -c.degradation and (s.unstable(c) or s.complex(c)),
        {"lr": "lr_decrease", "reg": "reg_increase"},
    ),
    Rule(
        "gradient_spikes",
        "Gradient spikes",
        "tightening gradient clipping",
        lambda s, c: s.spiky(c) and not s.clip_at_min,
        {"clip": "clip_tighten"},
    ),
    Rule(
        "gradient_spikes_clip_at_min",
        "Gradient spikes with clipping at its tightest",
        "growing the effective batch",
        lambda s, c: s.spiky(c),
        {"batch": "batch_grow"},
    ),
    Rule(
        "plateau_low_entropy",
        "Loss plateau with low multi-scale entropy (too stable)",
        "encouraging exploration: increasing LR, relaxing regularization, shrinking the batch",
        lambda s, c: abs(s.improvement) < c.plateau and s.simple(c) and s.stable(c),
        {"lr": "explore_lr_increase", "reg": "explore_reg_decrease", "batch": "explore_batch_shrink"},
    ),
    Rule(
        "slow_stable",
        "Slow loss improvement with stable gradients",
        "increasing LR",
        lambda s, c: -c.plateau <= s.improvement < c.target_loss_improvement and s.stable(c),
        {"lr": "lr_increase"},
    ),
)


class SimplifiedController:
    """Reads loss and gradient norm every step, decides every `control_frequency` steps once a full window is in."""

    def __init__(self, config: SimplifiedConfig, grad_accum: int = 1) -> None:
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        self.config = config
        self.base_grad_accum = grad_accum
        self.grad_accum = grad_accum
        self.lr_factor = 1.0
        self.reg_factor = 1.0
        self.clip_factor = 1.0
        self.losses: deque[float] = deque(maxlen=max(config.window, config.entropy_window))
        self.grad_norms: deque[float] = deque(maxlen=config.window)
        self.decisions: list[dict] = []  # every fired rule, in order (scu_training_metrics.json)
        self.checks = 0  # decisions taken, including "healthy, no action"
        self.entropy_runs = 0  # decisions at which the wavelet entropy could be computed
        self.last_step = 0
        self.last_loss: float | None = None
        self.last_signals: Signals | None = None
        self.grad_norm_sum = 0.0
        self.grad_norm_count = 0

    def step(self, telemetry: StepTelemetry) -> Action:
        self.last_step = telemetry.step
        self.last_loss = telemetry.data_bpt
        if math.isfinite(telemetry.data_bpt):
            self.losses.append(telemetry.data_bpt)
        if telemetry.grad_norm is not None and math.isfinite(telemetry.grad_norm):
            self.grad_norms.append(telemetry.grad_norm)
            self.grad_norm_sum += telemetry.grad_norm
            self.grad_norm_count += 1
        reasons = []
        if telemetry.step % self.config.control_frequency == 0 and len(self.losses) >= self.config.window:
            decision = self.decide(telemetry.step)
            if decision is not None:
                reasons.append(decision["reason"])
        return Action(
            lr_factor=self.lr_factor,
            reg_factor=self.reg_factor,
            grad_clip_factor=self.clip_factor,
            grad_accum=self.grad_accum,
            reasons=reasons,
        )

    def signals(self, step: int) -> Signals:
        c = self.config
        recent = list(self.losses)[-c.window :]
        grad_cv, spikes = None, 0
        if len(self.grad_norms) >= 2:
            g = np.asarray(self.grad_norms, dtype=float)
            mean = float(g.mean())
            grad_cv = float(g.std() / mean) if mean > 0 else 0.0
            spikes = int(np.sum(g > c.spike_factor * float(np.median(g))))
        # Only on a full window: the level, hence the entropy of plain noise, then stays the same all run.
        full = len(self.losses) >= c.entropy_window
        we = wavelet_entropy(list(self.losses)[-c.entropy_window :], c.wavelet, c.dwt_max_level) if full else None
        return Signals(
            step=step,
            improvement=loss_improvement(recent),
            grad_cv=grad_cv,
            spikes=spikes,
            entropy=None if we is None else we[0],
            levels=0 if we is None else we[1],
            clip_at_min=self.clip_factor <= c.clip_factor_min,
        )

    def decide(self, step: int) -> dict | None:
        """Measure the signals, apply the first matching rule, and record it (None: healthy, no action)."""
        c = self.config
        s = self.signals(step)
        self.checks += 1
        self.entropy_runs += s.entropy is not None
        self.last_signals = s
        rule = next((r for r in RULES if r.when(s, c)), None)
        if rule is None:
            return None
        before = (self.lr_factor, self.reg_factor, self.clip_factor, self.grad_accum)
        for knob, step_size in rule.effects.items():
            self._apply(knob, getattr(c, step_size))
        changed = before != (self.lr_factor, self.reg_factor, self.clip_factor, self.grad_accum)
        reason = f"SCU Step {step}: {rule.situation} - {rule.response} ({s.describe()})"
        if not changed:
            reason += "; all affected factors already at their bounds, nothing changed"
        decision = {
            "step": step,
            "action": rule.name,
            "reason": reason,
            "applied": changed,
            "lr_factor": self.lr_factor,
            "batch_adjustment": self.grad_accum / self.base_grad_accum,
            "grad_accum": self.grad_accum,
            "grad_clip_factor": self.clip_factor,
            "reg_factor": self.reg_factor,
            "signals": asdict(s),
        }
        self.decisions.append(decision)
        return decision

    def _apply(self, knob: str, multiplier: float) -> None:
        c = self.config
        if knob == "lr":
            self.lr_factor = min(max(self.lr_factor * multiplier, c.lr_factor_min), c.lr_factor_max)
        elif knob == "reg":
            self.reg_factor = min(max(self.reg_factor * multiplier, c.reg_factor_min), c.reg_factor_max)
        elif knob == "clip":
            self.clip_factor = min(max(self.clip_factor * multiplier, c.clip_factor_min), 1.0)
        elif knob == "batch":
            most = self.base_grad_accum * c.max_batch_factor
            self.grad_accum = min(max(round(self.grad_accum * multiplier), self.base_grad_accum), most)
        else:
            raise ValueError(f"unknown knob {knob!r}")

    def summary(self) -> dict:
        """Run-level facts for scu_training_summary.json (the loop adds what only it knows, e.g. final LR)."""
        window = list(self.losses)[-self.config.window :]
        applied = [d for d in self.decisions if d["applied"]]
        return {
            "total_steps": self.last_step,
            "final_loss_bpt": self.last_loss,
            "final_window_mean_loss_bpt": float(np.mean(window)) if window else None,
            "loss_trend": loss_improvement(window) if len(window) >= 2 else None,
            "loss_trend_meaning": "relative loss drop over the last window (positive: improving)",
            "control_checks": self.checks,
            "actions_fired": len(self.decisions),
            "actions_applied": len(applied),
            "actions_by_rule": {r.name: sum(d["action"] == r.name for d in applied) for r in RULES},
            "average_grad_norm": self.grad_norm_sum / self.grad_norm_count if self.grad_norm_count else None,
            "multiscale_analysis_ran": self.entropy_runs > 0,
            "multiscale_analysis_runs": self.entropy_runs,
            "final_lr_factor": self.lr_factor,
            "final_reg_factor": self.reg_factor,
            "final_grad_clip_factor": self.clip_factor,
            "final_grad_accum": self.grad_accum,
        }

    def state_dict(self) -> dict:
        return {
            "grad_accum": self.grad_accum,
            "lr_factor": self.lr_factor,
            "reg_factor": self.reg_factor,
            "clip_factor": self.clip_factor,
            "losses": list(self.losses),
            "grad_norms": list(self.grad_norms),
            "decisions": list(self.decisions),
            "checks": self.checks,
            "entropy_runs": self.entropy_runs,
            "last_step": self.last_step,
            "last_loss": self.last_loss,
            "grad_norm_sum": self.grad_norm_sum,
            "grad_norm_count": self.grad_norm_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.grad_accum = int(state["grad_accum"])
        self.lr_factor = float(state["lr_factor"])
        self.reg_factor = float(state["reg_factor"])
        self.clip_factor = float(state["clip_factor"])
        self.losses.clear()
        self.losses.extend(float(v) for v in state["losses"])
        self.grad_norms.clear()
        self.grad_norms.extend(float(v) for v in state["grad_norms"])
        self.decisions = list(state["decisions"])
        self.checks = int(state["checks"])
        self.entropy_runs = int(state["entropy_runs"])
        self.last_step = int(state["last_step"])
        self.last_loss = None if state["last_loss"] is None else float(state["last_loss"])
        self.grad_norm_sum = float(state["grad_norm_sum"])
        self.grad_norm_count = int(state["grad_norm_count"])

    def outputs(self, *, final_lr: float, regularization: str, training: dict) -> dict[str, dict]:
        """The three S-SCU files of a run directory, by name; the loop writes them atomically.

        `regularization` says what reg_factor acted on ("pi_target", "lambda", "weight_decay" or
        "nothing"); `training` holds the loop's settings that the factors multiply.
        """
        return {
            "scu_training_metrics.json": {"actions": self.decisions},
            "scu_training_summary.json": {**self.summary(), "final_lr": final_lr, "regularization_acts_on": regularization},
            "simple_training_config.json": {
                "controller": "simplified",
                "sscu": self.describe(),
                "regularization_acts_on": regularization,
                "training": training,
            },
        }

    def describe(self) -> dict:
        """The settings used (simple_training_config.json)."""
        return {
            **asdict(self.config),
            "base_grad_accum": self.base_grad_accum,
            "rules": [{"name": r.name, "situation": r.situation, "response": r.response, "effects": r.effects} for r in RULES],
        }
