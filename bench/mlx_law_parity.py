"""Does the default law track S* the same way on both `scu train` backends? MLX and PyTorch, `law: auto` and `pi`.

    python -m bench.mlx_law_parity [--steps 150] [--target 0.02] [--out bench/results/mlx_law_parity.json]

The config is tests/mlx's loop test (the cached test base, 40 pydoc topics, LoRA r 4, lr 2e-3, 2 x 32 tokens). Each
run reports the share of the second half with the smoothed S within ±10% of S*, the first step in that band, its
mean Ŝ there, its last λ, its first five λ and the penalty's sensitivity at step 2 (the first with one). The two backends draw LoRA's A differently, so runs are alike, not equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import scu.mlx.loop as mlx_loop
import scu.torch.loop as torch_loop
from scu.config.schema import build_config
from scu.data.builtin import pydoc_topics
from scu.models.tiny import TEST_BASE, cached_base
from scu.report.records import atomic_write_json


def tracking(rows: list[dict], target: float) -> dict[str, float | int | None]:
    """In-band share and mean Ŝ over the second half, the first step in band, and the last λ."""
    second = [r["s_hat"] for r in rows[len(rows) // 2:]]
    band = [abs(s - target) <= 0.1 * target for s in second]
    first = next((r["step"] for r in rows if abs(r["s_hat"] - target) <= 0.1 * target), None)
    return {"in_band_2nd_half": sum(band) / len(band), "mean_s_hat_2nd_half": statistics.fmean(second),
            "first_step_in_band": first, "final_lambda": rows[-1]["lambda"],
            "lambda_steps_1_to_5": [r["lambda"] for r in rows[:5]],
            "penalty_sensitivity_step_2": rows[1].get("penalty_sensitivity")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--target", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=Path("bench/results/mlx_law_parity.json"))
    args = ap.parse_args(argv)
    base = cached_base(TEST_BASE, progress=False)
    work = Path(tempfile.mkdtemp(prefix="mlx_law_parity-"))
    (work / "train.txt").write_text("\n\n".join(pydoc_topics()[:40]))
    result: dict[str, dict] = {}
    for backend, loop in (("mlx", mlx_loop), ("torch", torch_loop)):
        for law in ("auto", "pi"):
            cfg = build_config({
                "model": {"base_model": str(base), "backend": backend},
                "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                "scu": {"target_s": args.target, "law": law},
                "training": {"learning_rate": 2e-3, "batch_size": 2, "block_size": 32, "steps": args.steps,
                             "warmup_steps": 2, "checkpoint_every": 1000},
                "data": {"train_data": str(work / "train.txt")},
            })
            meta = loop.train(cfg, work / f"{backend}-{law}", progress=False)
            rows = [json.loads(line) for line in (work / f"{backend}-{law}" / "metrics.jsonl").read_text().splitlines()]
            result[f"{backend}/{law}"] = {"law_run": meta["law"], **tracking(rows, args.target)}
            print(f"{backend:5s} {law:4s} ({meta['law']}): {result[f'{backend}/{law}']}", flush=True)
    atomic_write_json(args.out, {"steps": args.steps, "target_s": args.target, "runs": result})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
