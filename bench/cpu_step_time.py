"""How a LoRA step's CPU time grows with the block length: the numbers behind `scu suggest`'s CPU estimate.

    python -m bench.cpu_step_time --config CONFIG [--shapes 128x4 512x1 2048x1] [--steps 5] [--work DIR]
                                  [--note "..."] [--out bench/results/cpu_step_time.json]

Trains each shape (block x sequences, equal tokens a step where the shapes say so) for a few steps with
`scu train` (the product's entry point, one thread) on the given config, reads the median step time of steps
after the first from its metrics.jsonl, and fits per-token time = k (6 P + c L T h) over the block length T
(P parameters, L layers, h hidden, from the model's config): c is the attention coefficient `scu suggest` uses
(ATTENTION_FLOPS), the ratio of the longest to the shortest block's per-token time is reported next to it.
Runs already in --work are reused (resumable). Record what else ran on the machine with --note: the
absolute times depend on it, the ratios much less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from scu.config.schema import load_config
from scu.config.smart import inspect_model
from scu.report.records import MetricsLog, atomic_write_json

RESULTS = Path(__file__).parent / "results"


def median_step_s(run: Path, steps: int) -> float | None:
    rows = MetricsLog(run / "metrics.jsonl").read()
    times = [r["step_time"] for r in rows if "step_time" in r][1:]
    return statistics.median(times) if len(times) >= steps - 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="a `scu train` config (e.g. the one `scu suggest` wrote)")
    ap.add_argument("--shapes", nargs="+", default=["128x4", "512x1", "2048x1"], help="block x sequences a step")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "scu" / "cpu_step_time"), help="where the runs are kept (reused)")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    ap.add_argument("--out", default=str(RESULTS / "cpu_step_time.json"))
    args = ap.parse_args()
    info = inspect_model(load_config(args.config).model.base_model)
    rows = []
    for shape in args.shapes:
        block, seqs = (int(v) for v in shape.split("x"))
        run = Path(args.work) / shape
        if median_step_s(run, args.steps) is None:
            cmd = [sys.executable, "-m", "scu.cli", "train", "--config", args.config, "--output", str(run), "--overwrite",
                   "--steps", str(args.steps), "--set", f"training.block_size={block}", "--set", f"training.batch_size={seqs}",
                   "--set", "training.gradient_accumulation=1"]
            subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        step_s = median_step_s(run, args.steps)
        rows.append({"block": block, "sequences": seqs, "step_s": step_s, "s_per_1k_tokens": 1000 * step_s / (block * seqs)})
        print(rows[-1], flush=True)
    T = np.array([r["block"] for r in rows], float)
    per_token = np.array([r["step_s"] / (r["block"] * r["sequences"]) for r in rows])
    slope, intercept = np.polyfit(T, per_token, 1)
    coefficient = slope / intercept * 6 * info.params / (info.layers * info.hidden)
    out = {"config": args.config, "model": {"params": info.params, "layers": info.layers, "hidden": info.hidden},
           "threads": 1, "note": args.note, "rows": rows, "attention_coefficient": coefficient,
           "longest_over_shortest_per_token": float(per_token[T.argmax()] / per_token[T.argmin()])}
    atomic_write_json(args.out, out)
    print(f"attention coefficient c = {coefficient:.1f} (FLOP count: 12); per-token time, block {int(T.max())} over "
          f"{int(T.min())}: {out['longest_over_shortest_per_token']:.2f}x; wrote {args.out}")


if __name__ == "__main__":
    main()
