"""Replay a power/temperature trace through T-SCU on a simulated clock, without training.

Steps of fixed compute time advance the clock; the controller's pacing sleeps and pauses
advance it too, so a trace of an hour plays in milliseconds and the run is deterministic.
Used for offline analysis of recorded traces, the tests, and the docs' replay figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scu.core.telemetry import StepTelemetry
from scu.energy.replay import ReplaySensor
from scu.energy.runtime import ThermalRun, TscuConfig


class SimClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def replay_run(
    trace: str | Path,
    config: TscuConfig,
    seconds: float,
    out: str | Path,
    step_s: float = 0.2,
    tokens_per_epoch: int | None = None,
    bits_per_token: Callable[[int], float] = lambda step: 0.0,
) -> ThermalRun:
    """Run T-SCU against `trace` for `seconds` of simulated time; each row gets `t_end`, the
    simulated time its step ended. `bits_per_token(step)` stands in for the training loss."""
    clock = SimClock()
    run = ThermalRun(config, tokens_per_epoch, sensor=ReplaySensor(trace, clock=clock), sleep=clock.sleep)
    run.start(out, background=False)
    step = 0
    while clock.now < seconds:
        clock.sleep(step_s)
        step += 1
        telemetry = StepTelemetry(
            step=step, data_bpt=bits_per_token(step), param_bpt=0.0, tokens=1, lr=1.0, wall_time=step_s
        )
        action = run.step(telemetry)
        run.rows[-1]["t_end"] = clock.now - run.rows[-1]["paused_s"]
        clock.sleep(action.sleep_s)  # what the loop does with the pacing
    run.write()
    run.close()
    return run
