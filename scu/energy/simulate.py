"""Replay a power/temperature trace through T-SCU on a simulated clock, without training.

Steps of fixed compute time advance the clock; the controller's pacing sleeps and pauses
advance it too, so a trace of an hour plays in milliseconds and the run is deterministic.
Used for offline analysis of recorded traces, the tests, and the docs' replay figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scu.config.schema import Config, ScuSection
from scu.core.bits import LN2
from scu.energy.replay import ReplaySensor
from scu.energy.runtime import EnergyMeter, TscuConfig
from scu.session import ControlSession, StepResult


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
) -> ControlSession:
    """Run T-SCU alone, through a control session, against `trace` for `seconds` of simulated time; each
    T-SCU row gets `t_end`, the simulated time its step ended. `bits_per_token(step)` stands in for the loss."""
    clock = SimClock()
    cfg = Config(scu=ScuSection(enabled=False), tscu=config)
    meter = EnergyMeter(config, ReplaySensor(trace, clock=clock), sleep=clock.sleep)
    Path(out).mkdir(parents=True, exist_ok=True)
    session = ControlSession(cfg, tokens_per_epoch, out, meter=meter, sleep=clock.sleep)
    session.start(background=False)
    step = 0
    while clock.now < seconds:
        clock.sleep(step_s)
        step += 1
        ended = clock.now
        session.record(session.step(StepResult(bits_per_token(step) * LN2, None, None, 1), 0.0, 1.0, step_s))
        session.tscu.rows[-1]["t_end"] = ended
    session.write_records("completed")
    session.close()
    return session
