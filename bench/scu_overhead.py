"""SCU's cost per optimizer step: the same loop with the regularizer + controller on, then off.

    python -m bench.scu_overhead [--steps 200] [--base demo|test] [--out bench/results/scu_overhead.json]

Both runs are set up side by side in one process and stepped alternately (on, off, on, off, ...),
so machine noise hits both arms alike. Reports the median of per-pair time ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scu.config.schema import build_config
from scu.data.builtin import pydoc_topics
from scu.demo import DEMO_BASE
from scu.models.tiny import BaseSpec, cached_base
from scu.torch.loop import current_lambda, record_step, scheduled_lr, setup, train_step

BASES = {"demo": DEMO_BASE, "test": BaseSpec(corpus="stdlib", max_chars=400_000, steps=120, hidden_size=64, intermediate_size=172, layers=2)}


def timed_step(run) -> float:
    t0 = time.perf_counter()
    run.state.step += 1
    lam, lr = current_lambda(run), scheduled_lr(run.state.step, run.cfg.training)
    res = train_step(run, lam, lr)
    record_step(run, res, lam, lr, 0.0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--base", choices=list(BASES), default="demo")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--out", default="bench/results/scu_overhead.json")
    args = ap.parse_args()
    base = cached_base(BASES[args.base])
    work = Path(tempfile.mkdtemp(prefix="scu_overhead-"))
    (work / "pydoc.txt").write_text("\n\n".join(pydoc_topics()))

    def make(enabled: bool):
        cfg = build_config({
            "model": {"base_model": str(base)},
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "scu": {"enabled": enabled, "target_s": 0.05},
            "training": {"learning_rate": 2e-3, "batch_size": args.batch_size, "block_size": args.block_size,
                         "steps": args.steps + args.warmup, "lr_schedule": "constant"},
            "data": {"train_data": str(work / "pydoc.txt")},
        })
        run = setup(cfg, work / f"run-{enabled}")
        run.model.train()
        return run

    on, off = make(True), make(False)
    t_on, t_off = [], []
    for i in range(args.steps + args.warmup):
        a, b = timed_step(on), timed_step(off)
        if i >= args.warmup:
            t_on.append(a)
            t_off.append(b)
    ratios = [a / b for a, b in zip(t_on, t_off)]
    result = {
        "base": args.base,
        "params": sum(p.numel() for p in off.model.parameters()),
        "batch": [args.batch_size, args.block_size],
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "median_step_s_on": statistics.median(t_on),
        "median_step_s_off": statistics.median(t_off),
        "median_pair_ratio": statistics.median(ratios),
        "ratio_of_medians": statistics.median(t_on) / statistics.median(t_off),
        "tokens_per_s_off": args.batch_size * (args.block_size - 1) / statistics.median(t_off),
    }
    print(f"base {args.base} ({result['params']:,} params), batch {args.batch_size}x{args.block_size}, {args.steps} step pairs")
    print(f"median step: SCU on {1e3 * result['median_step_s_on']:.2f} ms, off {1e3 * result['median_step_s_off']:.2f} ms")
    print(f"overhead: median per-pair ratio {result['median_pair_ratio']:.4f}, ratio of medians {result['ratio_of_medians']:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
