"""The MLX backend's cost per optimizer step: SCU on vs off in the same MLX loop, and tokens/s next to
the PyTorch backend on the same tiny model, batch and data.

    python -m bench.mlx_overhead [--steps 100] [--base demo|test] [--law pi|auto] [--out bench/results/mlx_overhead.json]

Four runs are set up side by side in one process and stepped in turn (MLX on, MLX off, PyTorch on,
PyTorch off, MLX on, ...), so machine noise hits every arm alike. A step here is the loop body
without file output: the training step (with its one host sync) plus the controllers.
Reports medians of per-round time ratios and tokens/s from median step times.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scu.report.records import atomic_write_json
import scu.mlx.loop as mlx_loop
import scu.torch.loop as torch_loop
from bench.scu_overhead import BASES
from scu.config.schema import build_config
from scu.data.builtin import pydoc_topics
from scu.driver import optimizer_step
from scu.models.tiny import cached_base


def timed_step(loop, run) -> float:
    """One loop-body step of `loop` (scu.mlx.loop or scu.torch.loop) on `run`, in seconds."""
    t0 = time.perf_counter()
    optimizer_step(run, loop.train_step)  # the controllers' share is timed too
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--base", choices=list(BASES), default="demo")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--law", choices=["pi", "auto"], default="pi",
                    help="the SCU arms' law (pi: as the committed results; auto: the default, the balance set on both)")
    ap.add_argument("--out", default="bench/results/mlx_overhead.json")
    args = ap.parse_args()
    base = cached_base(BASES[args.base])
    work = Path(tempfile.mkdtemp(prefix="mlx_overhead-"))
    (work / "pydoc.txt").write_text("\n\n".join(pydoc_topics()))

    def make(loop, backend: str, enabled: bool):
        cfg = build_config({
            "model": {"base_model": str(base), "backend": backend},
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "scu": {"enabled": enabled, "target_s": 0.05, "law": args.law},
            "training": {"learning_rate": 2e-3, "batch_size": args.batch_size, "block_size": args.block_size,
                         "steps": args.steps + args.warmup, "lr_schedule": "constant"},
            "data": {"train_data": str(work / "pydoc.txt")},
        })
        run = loop.setup(cfg, work / f"run-{backend}-{enabled}")
        run.model.train()
        return run

    arms = {
        "mlx_on": (mlx_loop, make(mlx_loop, "mlx", True)),
        "mlx_off": (mlx_loop, make(mlx_loop, "mlx", False)),
        "torch_on": (torch_loop, make(torch_loop, "torch", True)),
        "torch_off": (torch_loop, make(torch_loop, "torch", False)),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(args.steps + args.warmup):
        for name, (loop, run) in arms.items():
            dt = timed_step(loop, run)
            if i >= args.warmup:
                times[name].append(dt)
    tokens = args.batch_size * (args.block_size - 1)
    med = {name: statistics.median(t) for name, t in times.items()}

    def pair_ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    result = {
        "base": args.base,
        "law": args.law,
        "batch": [args.batch_size, args.block_size],
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "median_step_s": med,
        "tokens_per_s": {name: tokens / m for name, m in med.items()},
        "mlx_scu_overhead_median_pair_ratio": pair_ratio("mlx_on", "mlx_off"),
        "mlx_scu_overhead_ratio_of_medians": med["mlx_on"] / med["mlx_off"],
        "torch_scu_overhead_median_pair_ratio": pair_ratio("torch_on", "torch_off"),
        "mlx_over_torch_step_time_median_pair_ratio_scu_on": pair_ratio("mlx_on", "torch_on"),
    }
    print(f"law {args.law}, base {args.base}, batch {args.batch_size}x{args.block_size}, {args.steps} rounds of 4 interleaved steps")
    for name in arms:
        print(f"  {name:9s} median step {1e3 * med[name]:8.2f} ms  {result['tokens_per_s'][name]:8.0f} tokens/s")
    print(f"MLX SCU overhead: median per-round ratio {result['mlx_scu_overhead_median_pair_ratio']:.4f}, "
          f"ratio of medians {result['mlx_scu_overhead_ratio_of_medians']:.4f}")
    print(f"PyTorch SCU overhead (same rounds): {result['torch_scu_overhead_median_pair_ratio']:.4f}; "
          f"MLX/PyTorch step time with SCU: {result['mlx_over_torch_step_time_median_pair_ratio_scu_on']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
