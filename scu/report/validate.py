"""`scu validate ADAPTER_DIR`: the scaling guide's post-training checks, each pass, fail or skip with its reason.

A run passes when its adapter weights are there and finite, it finished, it took no NaN steps,
and (for SCU runs) λ ended non-zero, moved at all, was not pinned at a bound for most of the
run, and the smoothed S ended near its target. The exit code is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scu import ScuError
from scu.report.card import MLX_WEIGHTS, PEFT_WEIGHTS, adapter_format

MAX_AT_BOUND = 0.5  # "pinned at a bound for most of the run"
S_TOLERANCE = 0.2  # final smoothed S within ±20% of S* counts as "near the target"
FINISHED = ("completed", "stopped at equilibrium", "stopped by a controller")  # a controller stop is deliberate (T-SCU budget)


@dataclass
class Check:
    name: str
    outcome: Literal["pass", "fail", "skip"]
    reason: str


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """The file's tensors as NumPy arrays, read without torch where NumPy can hold them: importing torch
    would add seconds to `scu validate`. bfloat16, which NumPy lacks, goes through torch as float32."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        bf16 = any(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    if not bf16:
        from safetensors.numpy import load_file

        return load_file(path)
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(path).items()}


def check_adapter(d: Path) -> Check:
    fmt = adapter_format(d)
    if fmt is None:
        return Check("adapter", "fail", f"no adapter weights ({PEFT_WEIGHTS} or {MLX_WEIGHTS}) in {d}")
    name = PEFT_WEIGHTS if fmt == "peft" else MLX_WEIGHTS
    try:
        tensors = load_tensors(d / name)
    except Exception as e:  # a truncated or foreign file
        return Check("adapter", "fail", f"{name} is unreadable ({type(e).__name__})")
    bad = [k for k, v in tensors.items() if not np.isfinite(v).all()]
    if bad:
        return Check("adapter", "fail", f"{len(bad)} of {len(tensors)} tensors hold NaN/inf, e.g. {bad[0]}")
    return Check("adapter", "pass", f"{name}: {len(tensors)} tensors, all finite")


def check_status(meta: dict[str, Any]) -> Check:
    status = meta.get("status")
    if status in FINISHED:
        return Check("finished", "pass", f"status {status!r} after {meta.get('steps')} of {meta.get('steps_planned')} steps")
    return Check("finished", "fail", f"status {status!r}: the run did not finish (resume it with scu train --resume)")


def check_nan(meta: dict[str, Any]) -> Check:
    skips = meta.get("nan_skips")
    if not _finite(skips) or skips > 0:
        return Check("no_nan_steps", "fail", f"{skips} optimizer steps had a NaN/inf loss and were skipped")
    required = ["final_data_bpt"] + (["final_param_bpt", "final_s", "final_lambda"] if meta.get("scu_enabled") else [])
    bad = [f for f in required if not _finite(meta.get(f))]  # metadata.json writes a NaN as null
    bad += [f for f in ("val_bpt", "final_s_hat") if meta.get(f) is not None and not _finite(meta[f])]
    if bad:
        return Check("no_nan_steps", "fail", f"non-finite or missing values in metadata.json: {', '.join(bad)}")
    return Check("no_nan_steps", "pass", "no NaN/inf step; final losses finite")


def check_final_lambda(meta: dict[str, Any]) -> Check:
    if not meta.get("scu_enabled"):
        return Check("final_lambda", "skip", "SCU was off (plain LoRA): no λ")
    lam = meta.get("final_lambda")
    if not _finite(lam) or lam == 0:
        return Check("final_lambda", "fail", f"final λ is {lam}: the SCU penalty did nothing at the end of the run")
    return Check("final_lambda", "pass", f"final λ = {lam:.4g}")


def check_lambda_range(meta: dict[str, Any]) -> Check:
    if not meta.get("scu_enabled"):
        return Check("lambda_range", "skip", "SCU was off (plain LoRA): no λ")
    lo, hi = (list(meta.get("lambda_range") or []) + [None, None])[:2]
    if not (_finite(lo) and _finite(hi)):
        return Check("lambda_range", "fail", f"λ range [{lo}, {hi}] is not finite")
    if lo == 0 and hi == 0:
        return Check("lambda_range", "fail", "λ stayed at 0 all run ([0, 0]): no regularization was applied")
    sat = meta.get("lambda_saturation") or {}
    at_min, at_max = float(sat.get("at_min") or 0.0), float(sat.get("at_max") or 0.0)
    if at_min > MAX_AT_BOUND or at_max > MAX_AT_BOUND:
        which, frac = ("lower", at_min) if at_min >= at_max else ("upper", at_max)
        return Check(
            "lambda_range", "fail",
            f"λ was pinned at its {which} bound for {100 * frac:.0f}% of the steps; widen the bounds or change S* "
            "(scu doctor has details)",
        )
    return Check("lambda_range", "pass", f"λ ranged over [{lo:.3g}, {hi:.3g}], at a bound {100 * (at_min + at_max):.0f}% of steps")


def check_final_s(meta: dict[str, Any], tolerance: float) -> Check:
    cfg = meta.get("config", {}).get("scu", {})
    if not meta.get("scu_enabled"):
        return Check("final_s", "skip", "SCU was off (plain LoRA): no S target")
    if cfg.get("lambda_min") == cfg.get("lambda_max"):
        return Check("final_s", "skip", "λ was fixed, so S was not controlled toward a target")
    s = meta.get("final_s_hat", meta.get("final_s"))
    target = meta.get("target_s")
    if not (_finite(s) and _finite(target)):
        return Check("final_s", "fail", f"final S is {s} (target {target})")
    error = abs(s - target) / target
    text = f"final S (smoothed) {100 * s:.2f}% vs target {100 * target:g}% ({100 * error:.0f}% off, tolerance {100 * tolerance:g}%)"
    return Check("final_s", "pass" if error <= tolerance else "fail", text)


def validate(adapter_dir: str | Path, s_tolerance: float = S_TOLERANCE) -> list[Check]:
    d = Path(adapter_dir)
    if not d.is_dir():
        raise ScuError(f"adapter directory not found: {d}")
    path = d / "metadata.json"
    if not path.exists():
        raise ScuError(f"{d} has no metadata.json; pass the output directory of `scu train`")
    try:
        meta = json.loads(path.read_text())  # Python's json reads NaN/Infinity literals
    except json.JSONDecodeError as e:
        raise ScuError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    return [
        check_adapter(d), check_status(meta), check_nan(meta), check_final_lambda(meta),
        check_lambda_range(meta), check_final_s(meta, s_tolerance),
    ]


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="post-training checks of an adapter directory (exit 1 when one fails)")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="`scu train` output directory or adapter directory")
    p.add_argument("--s-tolerance", type=float, default=S_TOLERANCE, help="largest |final S - S*| / S* (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = validate(args.adapter_dir, args.s_tolerance)
    for c in checks:
        print(f"{c.outcome.upper():<5} {c.name:<14} {c.reason}")
    failed = [c for c in checks if c.outcome == "fail"]
    print(f"{len(failed)} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed or skipped")
    return 1 if failed else 0
