"""The one-way data flow between a training loop and its controllers.

A loop measures an optimizer step into a `StepTelemetry` (power and temperature come from a
telemetry source before any controller runs), hands it to every controller, and applies the
merged `Action` in one place. Controllers never touch the loop, the model or the telemetry:
whatever a controller wants changed (lambda, the PI target, LR, batch, clipping, pacing, a pause,
stopping) travels in its Action, and what it wants recorded travels in `Action.report`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scu.core.bits import LN2, info_ratio


@dataclass
class StepTelemetry:
    """What the loop measured for one completed optimizer step."""

    step: int  # 1-based index of the optimizer step just taken
    data_bpt: float  # token-weighted cross-entropy of the step, bits/token
    param_bpt: float  # description length of the learned change, bits/training token
    tokens: int  # tokens that entered the loss in this step (all ranks)
    lr: float  # learning rate used by this step
    grad_norm: float | None = None  # global L2 norm of the trainable gradients, before clipping
    wall_time: float = 0.0  # seconds spent in this step
    power_watts: float | None = None  # average over the step (telemetry source; None: no sensor)
    temperature_celsius: float | None = None  # hottest reading since the previous step
    energy_joules: float | None = None
    memory_temperature_celsius: float | None = None
    throttle_reasons: tuple[str, ...] = ()  # hardware throttling reported by the sensor during the step
    lam: float | None = None  # regularization weight this step was trained with (None: no penalty)
    target_s: float | None = None  # the S* that lambda is controlled toward (None: lambda not controlled)
    # Gradient balance (measured only for `law: balance`): with g_d the data gradient and g_p that of the penalty at
    # lambda 1 (ParamBPT * ln 2, nats), -<g_d, g_p> / ||g_p||^2 is the lambda whose penalty best cancels the data's pull.
    data_pull: float | None = None  # -<g_d, g_p>
    penalty_grad_sq: float | None = None  # ||g_p||^2
    # lr * clip * <g_p, D g_p>, D AdamW's per-entry step scale: the fall of the penalty (nats) per step that one unit
    # of lambda, held through AdamW's momentum, causes to first order
    penalty_sensitivity: float | None = None

    @property
    def s(self) -> float:
        return info_ratio(self.data_bpt, self.param_bpt)

    @property
    def loss_nats(self) -> float:
        return self.data_bpt * LN2


@dataclass
class Action:
    """What a controller asks of the loop. Defaults mean "no change"."""

    lam: float | None = None  # new regularization weight (PI)
    target_s: float | None = None  # new S* for the PI loop (before S-SCU's reg_factor)
    lr_factor: float = 1.0  # multiplies the scheduled learning rate
    reg_factor: float = 1.0  # strengthens regularization: divides the PI target, or multiplies a fixed lambda or the weight decay
    grad_accum: int | None = None  # new number of micro-batches per optimizer step
    grad_clip_factor: float = 1.0  # multiplies max_grad_norm
    sleep_s: float = 0.0  # pacing after this step (thermal)
    pause_until_celsius: float | None = None  # block until the temperature reads at or below this (thermal)
    stop: bool = False
    reasons: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # what the controller measured, for the run record only


class Controller(Protocol):
    """The contract every controller keeps: telemetry in, an Action out, and a plain-data state for checkpoints."""

    def step(self, telemetry: StepTelemetry) -> Action: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def merge(actions: Iterable[Action]) -> Action:
    """Combine several controllers' actions: factors multiply, pacing adds, the last explicit value wins."""
    out = Action()
    for a in actions:
        for name in ("lam", "target_s", "grad_accum"):
            if getattr(a, name) is not None:
                setattr(out, name, getattr(a, name))
        if a.pause_until_celsius is not None:  # the coolest threshold asked for holds
            out.pause_until_celsius = min(a.pause_until_celsius, out.pause_until_celsius or a.pause_until_celsius)
        out.lr_factor *= a.lr_factor
        out.reg_factor *= a.reg_factor
        out.grad_clip_factor *= a.grad_clip_factor
        out.sleep_s += a.sleep_s
        out.stop = out.stop or a.stop
        out.reasons.extend(a.reasons)
        out.report.update(a.report)
    return out
