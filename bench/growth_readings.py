"""How the growth model's readings depend on the lambda they answered: a check of the measured sensitivity.

Each step of a `law: balance` run with `feedforward: growth` gives a reading of the lambda at which ParamBPT would
have held still, y_k = lam_avg_{k-1} + ln2 * (P_k - pace * P_{k-1}) / sensitivity_{k-1}, with lam_avg AdamW's
momentum average of the lambdas applied (scu.core.pi.PIController._measure_growth). If the sensitivity were right,
y would not depend on lam_avg. If it overstated lambda's effect k-fold, y = lam_avg + (lambda* - lam_avg) / k, so
regressing y on lam_avg (with time, for lambda*'s drift) gives a slope of 1 - 1/k. The controller's own feedback also
ties lam_avg to past readings, so a passive run cannot identify k.

    PYTHONPATH=. python -m bench.growth_readings bench/results/pi_startup/real/<run>.json [...]

Reads `bench.pi_startup` result files whose traces hold `penalty_sensitivity` (recorded since 2026-12-06).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from scu.core.pi import PIConfig, PIController


def readings(trace: dict[str, list], momentum: float = PIConfig.momentum) -> tuple[list[int], list[float], list[float]]:
    """(step, lam_avg the step answered, reading) for every step with a measured growth.

    The run is replayed through the controller's own growth estimate (growth_alpha 1: each reading unaveraged), with
    the lambda the run applied set before each step, so the reading is the one the run's controller made."""
    lam, param, data, sens = trace["lambda"], trace["param_bpt"], trace["data_bpt"], trace["penalty_sensitivity"]
    c = PIController(PIConfig(law="balance", feedforward="growth", growth_alpha=1.0, smoothing="data", momentum=momentum))
    out: tuple[list[int], list[float], list[float]] = ([], [], [])
    for k in range(len(lam)):
        if k > 0:
            c.lam = lam[k - 1]  # the lambda the run applied at this step (each row records the next one)
        answered = c.growth_point
        c.update(param[k] / (data[k] + param[k]), parts=(data[k], param[k]),
                 balance=(0.0, 1.0 if param[k] else 0.0, sens[k] or 0.0))
        if answered is not None and answered[1] > 0.0:  # the step before had a sensitivity: this step gave a reading
            for column, value in zip(out, (k, answered[2], c.lambda_growth)):
                column.append(value)
    return out


def slope(steps: list[int], lam_avg: list[float], reading: list[float], first: int) -> dict[str, float]:
    """Least squares of the reading on (1, step, lam_avg) from `first` on: lam_avg's coefficient and its std error."""
    rows = [i for i, k in enumerate(steps) if k >= first]
    x = np.array([[1.0, steps[i], lam_avg[i]] for i in rows])
    y = np.array([reading[i] for i in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coef
    cov = np.linalg.inv(x.T @ x) * float(residual @ residual) / (len(y) - 3)
    return {"slope": float(coef[2]), "std_error": math.sqrt(cov[2, 2]), "steps": len(y)}


def analyse(path: Path) -> dict[str, Any]:
    trace = json.loads(path.read_text())["trace"]
    if "penalty_sensitivity" not in trace:
        raise SystemExit(f"{path}: its trace has no penalty_sensitivity; rerun it with bench.pi_startup (2026-12-06 on)")
    steps, lam_avg, reading = readings(trace)
    n = len(trace["lambda"])
    return {"file": path.name, "from_step_5": slope(steps, lam_avg, reading, 5),
            "second_half": slope(steps, lam_avg, reading, n // 2)}


def drift(growth: list[float | None], window: int = 10, lag: float = 9.0, skip: int = 20) -> dict[str, float]:
    """What a drift term would add to log(lambda): lag steps of the growth estimate's log-slope, fitted over the last
    `window` readings, from step `skip` + `window` on (median, 10th and 90th percentiles, standard deviation)."""
    values = []
    for end in range(skip + window, len(growth) + 1):
        part = growth[end - window : end]
        if all(x is not None and x > 0.0 for x in part):
            values.append(lag * float(np.polyfit(np.arange(window), np.log(part), 1)[0]))
    if not values:
        raise SystemExit("no run of positive growth estimates long enough for a slope")
    v = np.array(values)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
            "std": float(v.std()), "steps": len(values)}


def noise_and_rate(steps: list[int], reading: list[float], first: int, window: int = 20) -> dict[str, float]:
    """The readings' noise and drift in log, and the EMA rate that best trades lag against noise for them.

    Over every `window`-step stretch from `first` on, a line is fitted to log(reading): the noise is the residuals'
    standard deviation, the drift the median |slope|. An EMA at rate a lags a drift d by d(1 - a)/a and passes
    noise^2 * a/(2 - a); their sum is least near a = (4 d^2 / noise^2)^(1/3)."""
    pairs = [(k, math.log(y)) for k, y in zip(steps, reading) if k >= first and y is not None and y > 0.0]
    ks, ys = np.array([k for k, _ in pairs], dtype=float), np.array([y for _, y in pairs])
    residuals, slopes = [], []
    for i in range(len(ks) - window):
        a, b = np.polyfit(ks[i : i + window], ys[i : i + window], 1)
        slopes.append(abs(a))
        residuals.extend(ys[i : i + window] - (a * ks[i : i + window] + b))
    if not slopes:
        raise SystemExit(f"fewer than {window + 1} positive readings from step {first}")
    noise = float(np.std(residuals) * math.sqrt(window / (window - 2)))
    drift = float(np.median(slopes))
    return {"noise": noise, "drift": drift, "rate": (4.0 * drift**2 / noise**2) ** (1.0 / 3.0), "readings": len(ks)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--drift", action="store_true", help="instead: what a drift term (9 steps of the growth estimate's "
                    "10-step log-slope) would add to log(lambda), from step 30 on")
    ap.add_argument("--noise", action="store_true", help="instead: the readings' noise and drift in log from 20%% of the "
                    "run on, and the EMA rate that trades lag against noise for them (readings replayed with --momentum)")
    ap.add_argument("--momentum", type=float, default=PIConfig.momentum,
                    help="the momentum the runs' growth model used (0 for penalty_step: decoupled)")
    args = ap.parse_args(argv)
    if args.noise:
        for path in args.results:
            trace = json.loads(path.read_text())["trace"]
            steps, _, reading = readings(trace, args.momentum)
            r = noise_and_rate(steps, reading, int(0.2 * len(trace["lambda"])))
            print(f"{path.name}: noise {r['noise']:.3f}, drift {r['drift']:.4f} a step, rate {r['rate']:.2f} "
                  f"({r['readings']} readings)")
        return 0
    if args.drift:
        for path in args.results:
            d = drift(json.loads(path.read_text())["trace"]["lambda_growth"])
            print(f"{path.name}: median {d['median']:+.3f}, 10-90% {d['p10']:+.3f} to {d['p90']:+.3f}, "
                  f"standard deviation {d['std']:.3f} ({d['steps']} steps)")
        return 0
    for path in args.results:
        r = analyse(path)
        print(r["file"], *(f"{part}: slope {r[part]['slope']:+.2f} ± {r[part]['std_error']:.2f} ({r[part]['steps']} steps)"
                           for part in ("from_step_5", "second_half")), sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
