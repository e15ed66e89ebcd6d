"""The one-way data flow between a training loop and its controllers.

A loop measures an optimizer step into a `StepTelemetry`, hands it to each controller,
and applies the merged `Action`s. Controllers never touch the loop or the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scu.core.bits import info_ratio


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
    power_watts: float | None = None
    temperature_celsius: float | None = None
    energy_joules: float | None = None
    lam: float | None = None  # regularization weight this step was trained with (None: no penalty)
    target_s: float | None = None  # the S* that lambda was controlled toward (None: lambda not controlled)

    @property
    def s(self) -> float:
        return info_ratio(self.data_bpt, self.param_bpt)

    @property
    def loss_nats(self) -> float:
        return self.data_bpt * 0.6931471805599453


@dataclass
class Action:
    """What a controller asks of the loop. Defaults mean "no change"."""

    lam: float | None = None  # new regularization weight
    lr_factor: float = 1.0  # multiplies the scheduled learning rate
    reg_factor: float = 1.0  # multiplies lambda (S-SCU)
    grad_accum: int | None = None  # new number of micro-batches per optimizer step
    grad_clip_factor: float = 1.0  # multiplies max_grad_norm
    sleep_s: float = 0.0  # pacing before the next step (thermal)
    stop: bool = False
    reasons: list[str] = field(default_factory=list)


def merge(actions: list[Action]) -> Action:
    """Combine several controllers' actions: factors multiply, the last explicit value wins."""
    out = Action()
    for a in actions:
        if a.lam is not None:
            out.lam = a.lam
        if a.grad_accum is not None:
            out.grad_accum = a.grad_accum
        out.lr_factor *= a.lr_factor
        out.reg_factor *= a.reg_factor
        out.grad_clip_factor *= a.grad_clip_factor
        out.sleep_s += a.sleep_s
        out.stop = out.stop or a.stop
        out.reasons.extend(a.reasons)
    return out
