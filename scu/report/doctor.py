"""`scu doctor RUN_DIR`: read metrics.jsonl and name the scaling guide's troubleshooting cases, with their fixes.

| case                          | what the metrics show                                         | fix                              |
|-------------------------------|---------------------------------------------------------------|----------------------------------|
| λ saturates immediately       | λ at lambda_max within the first 10% of steps and stays there | S* is too aggressive: raise it   |
| λ stuck at 0 or at a bound    | λ at 0 or a bound for most of the second half                  | widen the bounds or change S*    |
| S stuck at 0%                 | S below 1% of S* for most of the second half                  | tokens_per_epoch is wrong        |
| λ oscillates                  | ln λ swings by more than ln 2, again and again, late in the run | lower Kp                         |
| loss increases after equilibrium | held-out (else training) BPT rises after the equilibrium step | stop at equilibrium (--auto-stop) |

The second half of the run is what counts for "stuck" and "oscillates": the start-up transient
(S starts at exactly 0) is no problem. The exit code is 1 when a case is found.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scu import ScuError
from scu.core.equilibrium import EquilibriumConfig, replay
from scu.core.simplified import loss_improvement
from scu.report.records import MetricsLog, read_json

STUCK = 0.5  # fraction of second-half steps
EARLY = 0.1  # "immediately": within this fraction of the steps
S_ZERO = 0.01  # S below this fraction of S* counts as 0
SWING = math.log(2.0)  # a swing of ln(lambda) at least this large (a factor of 2)
MIN_SWINGS = 4  # this many swings in the second half is an oscillation
RISE = 0.005  # relative loss rise after equilibrium that counts
MIN_STEPS = 20


@dataclass
class Finding:
    case: str
    evidence: str
    fix: str


def _col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([r[key] if isinstance(r.get(key), (int, float)) else np.nan for r in rows], dtype=float)


def saturates_immediately(rows: list[dict[str, Any]], lambda_max: float) -> Finding | None:
    lam = _col(rows, "lambda")
    at_max = lam >= lambda_max
    if not at_max.any():
        return None
    first = int(np.argmax(at_max))
    after = at_max[first:].mean()
    if first <= max(1, EARLY * len(rows)) and after >= 1 - (1 - STUCK) / 2:
        return Finding(
            "λ saturates immediately",
            f"λ reached lambda_max = {lambda_max:g} at step {rows[first]['step']} and stayed there for "
            f"{100 * after:.0f}% of the remaining steps",
            "S* is too aggressive (too small for what this data makes the adapter learn): raise scu.target_s",
        )
    return None


def stuck(rows: list[dict[str, Any]], lambda_min: float, lambda_max: float) -> Finding | None:
    late = rows[len(rows) // 2 :]
    lam = _col(late, "lambda")
    for name, mask in (
        ("0", lam == 0),
        (f"its lower bound {lambda_min:g}", lam <= lambda_min),
        (f"its upper bound {lambda_max:g}", lam >= lambda_max),
    ):
        if mask.mean() >= STUCK:
            return Finding(
                "λ stuck at 0 or at a bound",
                f"λ sat at {name} for {100 * mask.mean():.0f}% of the second half of the run",
                "the target cannot be reached inside [lambda_min, lambda_max]: widen the bounds or change S* (scu.target_s)",
            )
    return None


def s_stuck_at_zero(rows: list[dict[str, Any]], target: float) -> Finding | None:
    s = _col(rows[len(rows) // 2 :], "s")
    s = s[np.isfinite(s)]
    if len(s) and (s < S_ZERO * target).mean() >= STUCK:
        return Finding(
            "S stuck at 0%",
            f"S stayed below {100 * S_ZERO * target:.3g}% (1% of S*) for {100 * (s < S_ZERO * target).mean():.0f}% "
            f"of the second half (median {100 * float(np.median(s)):.2g}%)",
            "tokens_per_epoch is wrong (far too large, so ParamBPT = bits / tokens_per_epoch is ~0): leave "
            "data.tokens_per_epoch unset to count the packed training set, or set it to the tokens of one epoch",
        )
    return None


def swings(y: np.ndarray, size: float) -> list[float]:
    """Sizes of the alternating legs of y (trough to peak, peak to trough) that are at least `size` (a zigzag)."""
    out: list[float] = []
    lo = hi = float(y[0])
    direction, pivot, extreme = 0, 0.0, 0.0
    for v in map(float, y[1:]):
        if direction == 0:
            lo, hi = min(lo, v), max(hi, v)
            if v - lo >= size:
                direction, pivot, extreme = 1, lo, v
            elif hi - v >= size:
                direction, pivot, extreme = -1, hi, v
        elif direction * (v - extreme) > 0:  # the leg goes on
            extreme = v
        elif abs(extreme - v) >= size:  # it turned by at least `size`: the leg is complete
            out.append(abs(extreme - pivot))
            direction, pivot, extreme = -direction, extreme, v
    return out


def oscillates(rows: list[dict[str, Any]]) -> Finding | None:
    lam = _col(rows[len(rows) // 2 :], "lambda")
    lam = lam[np.isfinite(lam) & (lam > 0)]
    if len(lam) < MIN_STEPS:
        return None
    found = swings(np.log(lam), SWING)
    if len(found) >= MIN_SWINGS:
        return Finding(
            "λ oscillates",
            f"in the second half ln λ swung {len(found)} times by at least a factor of 2 (median factor "
            f"{math.exp(float(np.median(found))):.1f})",
            "lower scu.kp (halve it); if the swings remain, lower scu.ki too",
        )
    return None


def loss_rises_after_equilibrium(rows: list[dict[str, Any]], eq_step: int | None) -> Finding | None:
    if eq_step is None:
        return None
    after = [r for r in rows if r["step"] >= eq_step]
    val = [(r["step"], r["val_bpt"]) for r in after if isinstance(r.get("val_bpt"), (int, float))]
    if len(val) >= 3:
        start, end = val[0][1], float(np.mean([v for _, v in val[-3:]]))
        rise = (end - start) / start
        what = f"held-out BPT went from {start:.4f} (step {val[0][0]}) to {end:.4f} (mean of the last 3 evaluations)"
    else:
        losses = _col(after, "data_bpt")
        losses = losses[np.isfinite(losses)]
        if len(losses) < EquilibriumConfig.window:
            return None
        rise = -loss_improvement(losses)
        what = f"the training DataBPT trend rose by {100 * rise:.2f}% over the {len(losses)} steps after it"
    if rise > RISE:
        return Finding(
            "loss increases after equilibrium",
            f"λ-equilibrium at step {eq_step}; {what}",
            "stop at equilibrium: scu train --auto-stop (equilibrium.auto_stop: true) saves the adapter there",
        )
    return None


def diagnose(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    """The troubleshooting cases these metrics show (an empty list: none of them)."""
    if len(rows) < MIN_STEPS:
        raise ScuError(f"only {len(rows)} steps in metrics.jsonl; scu doctor needs at least {MIN_STEPS}")
    cfg = meta.get("config", {})
    scu = cfg.get("scu", {})
    if not meta.get("scu_enabled", scu.get("enabled", True)):
        return []
    lo, hi = float(scu.get("lambda_min", 1e-4)), float(scu.get("lambda_max", 10.0))
    target = float(meta.get("target_s") or scu.get("target_s", 0.05))
    findings: list[Finding | None] = []
    if lo < hi:
        immediate = saturates_immediately(rows, hi)
        zero_s = s_stuck_at_zero(rows, target)
        findings += [immediate, zero_s]
        if immediate is None and zero_s is None:  # those two are the cause of a stuck λ, when present
            findings.append(stuck(rows, lo, hi))
        findings.append(oscillates(rows))
    else:
        findings.append(s_stuck_at_zero(rows, target))
        if hi == 0:
            findings.append(Finding(
                "λ stuck at 0 or at a bound",
                "λ is fixed at 0 by the config (scu.lambda_min = scu.lambda_max = 0): the SCU penalty is off",
                "for PI control of λ set scu.lambda_min < scu.lambda_max (defaults 1e-4 and 10)",
            ))
    eq = meta.get("equilibrium_step")
    if eq is None and lo < hi:
        eq = replay(rows, EquilibriumConfig(**cfg.get("equilibrium", {})), meta.get("tokens_per_epoch")).equilibrium_step
    findings.append(loss_rises_after_equilibrium(rows, eq))
    return [f for f in findings if f is not None]


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="name the troubleshooting cases a run shows, with their fixes")
    p.add_argument("run_dir", metavar="RUN_DIR", help="`scu train` output directory (reads metrics.jsonl, metadata.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    d = Path(args.run_dir)
    rows = MetricsLog(d / "metrics.jsonl").read()
    if not rows:
        raise ScuError(f"{d} has no metrics.jsonl rows; pass a `scu train` run directory")
    meta = read_json(d / "metadata.json") or {}
    findings = diagnose(rows, meta)
    for f in findings:
        print(f"CASE: {f.case}\n  seen: {f.evidence}\n  fix:  {f.fix}")
    if not findings:
        print(f"no troubleshooting case found in {len(rows)} steps")
    return 1 if findings else 0
