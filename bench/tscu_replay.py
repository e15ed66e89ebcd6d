"""T-SCU on a replayed trace with an over-budget plateau and a thermal spike (simulated clock).

The trace (budget 20 W, max 75 C, pause at 85 C, resume at 70 C): 12 W / 50-60 C, a 35 W plateau
from 20 s to 60 s, a spike to 92 C at 100-105 s that cools to 55 C by 140 s. Prints every change
of the control factor with its reason, and the run's analysis. Then closes the loop on a simulated
device that draws 60 W computing and 5 W asleep (0.1 s steps): pacing should hold the average power
at the budget, at the factor (20 - 5) / (60 - 5) = 0.273. Writes bench/results/tscu_replay.json.

    python bench/tscu_replay.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scu.core.telemetry import StepTelemetry
from scu.core.thermal import ThermalConfig, ThermalController
from scu.energy.runtime import TscuConfig
from scu.energy.simulate import replay_run
from scu.report.records import atomic_write_json

TRACE = "time,watts,celsius\n0,12,50\n20,12,60\n20.001,35,60\n60,35,60\n60.001,12,60\n100,12,60\n105,12,92\n140,12,55\n400,12,55\n"
RESULTS = Path(__file__).parent / "results" / "tscu_replay.json"


def closed_loop(busy: float = 60.0, idle: float = 5.0, step_s: float = 0.1, seconds: float = 120.0) -> dict:
    """Average power of a device whose power follows the duty cycle the controller sets."""
    c = ThermalController(ThermalConfig(power_budget_watts=20.0))
    t, sleep, history = 0.0, 0.0, []
    while t < seconds:
        power = (busy * step_s + idle * sleep) / (step_s + sleep)
        history.append((t, power, step_s + sleep))
        t += step_s + sleep
        sleep = c.step(StepTelemetry(1, 0.0, 0.0, 1, 1.0, wall_time=step_s, power_watts=power, temperature_celsius=50.0)).sleep_s
    tail = [(p, d) for start, p, d in history if start >= seconds - 30]
    return {"avg_power_last_30s": sum(p * d for p, d in tail) / sum(d for _, d in tail), "factor": c.factor,
            "expected_factor": (20.0 - idle) / (busy - idle)}  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.csv"
        trace.write_text(TRACE)
        run = replay_run(trace, TscuConfig(enabled=True), 220.0, Path(d) / "run", step_s=0.2)
    timeline = []
    last = None
    for r in run.tscu.rows:
        if r["control_factor"] != last or r["reasons"]:
            timeline.append({k: r[k] for k in ("step", "t_end", "power_watts", "temperature_celsius", "control_factor", "paused_s", "reasons")})
            last = r["control_factor"]
    print(f"{'t (s)':>7} {'W':>6} {'C':>6} {'factor':>7} {'paused':>7}  reasons")
    for e in timeline:
        print(f"{e['t_end']:7.1f} {e['power_watts']:6.1f} {e['temperature_celsius']:6.1f} {e['control_factor']:7.3f} "
              f"{e['paused_s']:7.1f}  {'; '.join(e['reasons'])}")  # fmt: skip
    analysis = run.tscu.analysis(run.controllers["thermal"], run.meter)
    keys = ["total_energy_joules", "avg_power_watts", "avg_temperature_celsius", "max_temperature_celsius",
            "time_over_budget_s", "throttle_events", "pause_events", "paused_s", "steps"]  # fmt: skip
    print("\n".join(f"{k}: {analysis[k]:.4g}" if isinstance(analysis[k], float) else f"{k}: {analysis[k]}" for k in keys))
    loop = closed_loop()
    print(f"closed loop, 60 W busy / 5 W idle, budget 20 W: {loop['avg_power_last_30s']:.2f} W over the last 30 s, "
          f"factor {loop['factor']:.3f} (expected {loop['expected_factor']:.3f})")  # fmt: skip
    atomic_write_json(RESULTS, {"command": "python bench/tscu_replay.py", "timeline": timeline,
                                "analysis": {k: analysis[k] for k in keys}, "closed_loop": loop})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
