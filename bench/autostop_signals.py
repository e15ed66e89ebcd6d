"""Why auto-stop does not fire: the λ-equilibrium detector's three signals, replayed on the harness's cached runs.

    python -m bench.autostop_signals [--window 50] [--arms scu_defaults scu_auto ...] [--out bench/results/autostop_signals.json]
    python -m bench.autostop_signals --runs 'bench/results/autostop/*/runs/*/seed*.json' --window 100 --equilibrium lambda_tolerance=0.2

For each run of the tiny (`bench/results/scu_vs_baselines/runs`) and real (`..._real/runs`) harness that kept
its per-step rows, the detector (`scu.core.equilibrium`) is replayed with the given window and its default
tolerances; the signals at the last step are reported next to the held-out BPT along the way, so one can see
which condition blocks and whether stopping earlier would have cost anything. No training is run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.autostop import fitted_slope_per_100
from bench.harness.settings import key_values
from scu.core.equilibrium import EquilibriumConfig, EquilibriumDetector, telemetry_from_rows
from scu.report.records import atomic_write_json

RESULTS = Path(__file__).parent / "results"
SCALES = {"tiny": RESULTS / "scu_vs_baselines" / "runs", "real": RESULTS / "scu_vs_baselines_real" / "runs"}


def replay_run(run: dict, window: int, **tolerances: float) -> dict:
    """The detector over one cached run: where it fired (if anywhere), its last measurement, and the held-out BPT
    of the first evaluation at or after the firing step against the run's best (`heldout_cost_next_eval`), and the
    least-squares slope of held-out BPT around it, as bench.autostop judges the data-rich goal (`heldout_fitted_slope`:
    per 100 steps and its standard error, fractions)."""
    target = run["config"]["scu"].get("target_s") if run["config"]["scu"].get("lambda_min") != run["config"]["scu"].get("lambda_max") else None
    t = run["config"]["training"]
    per_step = t["batch_size"] * t["block_size"] * t.get("gradient_accumulation", 1)  # the harness's rows keep no count
    rows = [r | {"lambda_used": r.get("lambda_used", r.get("lambda")), "target_s": r.get("target_s", target),
                 "tokens": r.get("tokens", per_step)} for r in run["rows"]]
    config = EquilibriumConfig(window=window, **tolerances)
    detector = EquilibriumDetector(config, run.get("tokens_per_epoch"))  # min_epochs as the run would have read it
    for telemetry in telemetry_from_rows(rows):
        detector.step(telemetry)
    s = detector.signals
    return {"steps": run["steps"], "fired_at": detector.equilibrium_step,
            "last": None if s is None else {"lambda_change": s.lambda_change, "s_error_or_trend": s.s_error,
                                             "loss_change_per_100": s.loss_change, "holds": s.holds(config)},
            "heldout_curve": [(c["step"], c["test"]) for c in run["curve"] if "test" in c],
            "heldout_cost_next_eval": next_eval_cost(run["curve"], detector.equilibrium_step),
            "heldout_fitted_slope": None if detector.equilibrium_step is None else
            fitted_slope_per_100(run["curve"], detector.equilibrium_step)}


def next_eval_cost(curve: list[dict], step: int | None) -> float | None:
    tests = [(c["step"], c["test"]) for c in curve if "test" in c]
    after = [b for s, b in tests if step is not None and s >= step]
    return after[0] / min(b for _, b in tests) - 1 if after and tests else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--arms", nargs="+", default=["scu_defaults", "scu_auto", "scu_target=1x", "N=72000_scu_defaults",
                                                   "N=72000_scu_auto"])
    ap.add_argument("--runs", help="replay these cached run files (a glob) instead of the harness's --arms")
    ap.add_argument("--equilibrium", nargs="*", default=[], metavar="KEY=VALUE", help="tolerances other than the defaults")
    ap.add_argument("--out", default=str(RESULTS / "autostop_signals.json"))
    args = ap.parse_args()
    tolerances = key_values(args.equilibrium)
    out: dict = {"window": args.window, "tolerances": tolerances, "runs": {}}
    groups = ({"runs": sorted(Path().glob(args.runs))} if args.runs else
              {f"{scale}/{arm}": sorted((root / arm).glob("seed*.json")) for scale, root in SCALES.items() for arm in args.arms})
    for group, paths in groups.items():
        for path in paths:
            run = json.loads(path.read_text())
            if not run.get("rows"):
                continue
            row = replay_run(run, args.window, **tolerances)
            name = str(path) if args.runs else f"{group}/{path.stem}"
            out["runs"][name] = row
            last = row["last"] or {}
            cost, slope = row["heldout_cost_next_eval"], row["heldout_fitted_slope"]
            print(f"{name}: fired at {row['fired_at']} of {row['steps']}"
                  f"{'' if cost is None else f' (held-out at the next evaluation {100 * cost:+.2f}% against the best)'}"
                  f"{'' if slope is None else f' (fitted held-out slope {100 * slope[0]:+.2f} ± {100 * slope[1]:.2f}%/100 steps)'}; last window: "
                  f"λ {100 * last.get('lambda_change', 0):+.1f}%, S {100 * last.get('s_error_or_trend', 0):+.1f}%, "
                  f"loss {100 * last.get('loss_change_per_100', 0):+.1f}%/100 steps; held-out {row['heldout_curve']}")
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
