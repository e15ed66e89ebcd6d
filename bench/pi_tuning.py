"""Measure PI laws and gains on a real gradient: does S settle at S* without a limit cycle?

    python -m bench.pi_tuning [--steps 400] [--out bench/results/pi_tuning.json]

Base: the test-sized cached base (stdlib code); fine-tune: pydoc prose; LoRA r 8 on all
projections, constant LR. Every setting runs the same data and seed; prints one table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from scu.config.schema import build_config
from scu.core.tracking import tracking_from_rows
from scu.data.builtin import pydoc_topics
from scu.models.tiny import TEST_BASE, cached_base
from scu.report.records import MetricsLog, atomic_write_json
from scu.torch.loop import train

SETTINGS = {
    "guide kp0.8 ki0.15": {"law": "guide", "kp": 0.8, "ki": 0.15, "deadband": 0.003, "lambda_max": 2.0, "smoothing": "ratio"},
    "pi kp1 ki0.02": {"law": "pi", "kp": 1.0, "ki": 0.02},
    "pi kp1 ki0.05": {"law": "pi", "kp": 1.0, "ki": 0.05},
    "pi kp0.5 ki0.01": {"law": "pi", "kp": 0.5, "ki": 0.01},
    "pi kp2 ki0.04": {"law": "pi", "kp": 2.0, "ki": 0.04},
    "bumpless kp2 ki0.04": {"law": "bumpless", "kp": 2.0, "ki": 0.04},
    "balance kp2 ki0.04": {"law": "balance", "kp": 2.0, "ki": 0.04},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--only", nargs="*", help="names from SETTINGS")
    ap.add_argument("--grid", nargs="*", default=[], help="extra position-form settings as KP,KI pairs")
    ap.add_argument("--out", default="bench/results/pi_tuning.json")
    args = ap.parse_args()
    base = cached_base(TEST_BASE)
    work = Path(tempfile.mkdtemp(prefix="pi_tuning-"))
    data = work / "pydoc.txt"
    data.write_text("\n\n".join(pydoc_topics()))
    settings = dict(SETTINGS)
    selected = set(args.only or [])
    for pair in args.grid:
        kp, ki = (float(x) for x in pair.split(","))
        name = f"pi kp{kp:g} ki{ki:g}"
        settings[name] = {"law": "pi", "kp": kp, "ki": ki}
        selected.add(name)
    results = {}
    for name, scu in settings.items():
        if selected and name not in selected:
            continue
        cfg = build_config({
            "model": {"base_model": str(base)},
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "scu": {"target_s": args.target, **scu},
            "training": {"learning_rate": 2e-3, "batch_size": 8, "block_size": 128, "steps": args.steps,
                         "warmup_steps": 10, "lr_schedule": "constant", "checkpoint_every": 10**9},
            "data": {"train_data": str(data)},
        })
        out = work / name.replace(" ", "_")
        meta = train(cfg, out, progress=False)
        rows = MetricsLog(out / "metrics.jsonl").read()
        tr = tracking_from_rows(rows, args.target)
        lams = [r["lambda"] for r in rows[len(rows) // 2 :]]
        results[name] = {**tr.as_dict(), "lambda_second_half": [min(lams), max(lams)], "val_bpt": meta["val_bpt"],
                         "tokens_per_epoch": meta["tokens_per_epoch"],
                         "scu": meta["config"]["scu"]}  # every controller setting it ran with, defaults included
        r = results[name]
        print(f"{name:22s} err {100 * r['error']:5.1f}%  in-band {100 * r['in_band']:5.1f}%  settle {r['settling_step']}  "
              f"overshoot {100 * r['overshoot']:5.1f}%  at-bound {100 * r['at_bound']:4.1f}%  "
              f"lambda 2nd half [{r['lambda_second_half'][0]:.3g}, {r['lambda_second_half'][1]:.3g}]", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"steps": args.steps, "target_s": args.target, "results": results})


if __name__ == "__main__":
    main()
