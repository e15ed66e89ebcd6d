"""SCUTrainer under the default `law: auto` on SmolLM2-135M (dequantized Q4_1), beside `scu train`'s run of the same
setting: does the Trainer port hold S* on a real model, and is its adapter as good on held-out text?

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m bench.trainer_real --seed 0 [--report-only]

The setting is the real harness's main size (bench.scu_vs_baselines, `--scale real`): the 18k-token Shakespeare slice,
100 steps of 4 x 128 tokens, lr 5e-4 with 5 warm-up steps, LoRA rank 8 on all seven projections, S* 5%, the
default law, one thread. The Trainer gets the same packed blocks as `scu train` (position ids restart at each
document; loss targets as `scu train` counts them) and the same tokens per epoch; its batches come in the Trainer's
own shuffled order. Held-out and WikiText BPT are measured as the harness does. Each seed's result is cached in
bench/results/trainer_real/seed<N>.json (a rerun skips it); the report compares every cached seed with the harness's
`scu train` runs of the default (`decoupled_settle10_bound2_floor`, the `law: auto` set written out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path("bench/results/trainer_real")
SCU_TRAIN_RUNS = Path("bench/results/scu_vs_baselines_real/runs/decoupled_settle10_bound2_floor")
TARGET = 0.05


def tracking_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The harness's tracking numbers (scu.core.tracking) over a run's rows, and the mean S of its second half."""
    from scu.core.tracking import tracking_from_rows

    half = rows[len(rows) // 2 :]
    tr = tracking_from_rows(rows, TARGET)
    return {**tr.as_dict(), "mean_s_2nd_half": statistics.fmean(r["s"] for r in half), "final_lambda": rows[-1]["lambda"]}


def run_seed(seed: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainingArguments

    from bench.harness import data as hdata
    from bench.scu_vs_baselines import DEFAULT_DATA, REAL_SCALES, prepare_real
    from scu.config.schema import DataSection, LoraSection, ModelSection
    from scu.data.corpus import load_train_val
    from scu.eval.bpt import block_bpt
    from scu.torch.hf import SCUTrainer
    from scu.torch.model import add_lora, load_model, load_tokenizer

    torch.set_num_threads(1)
    scale = REAL_SCALES["real"]
    s = scale.run
    gguf, manifest, work = prepare_real(scale, DEFAULT_DATA.resolve())
    model_section = ModelSection(base_model=gguf)
    tokenizer = load_tokenizer(model_section)
    train_path = manifest["train"][str(scale.main_tokens)]["path"]
    data = load_train_val(DataSection(train_data=train_path, val_fraction=0.0), tokenizer, s.block_size, seed)
    blocks = data.train_blocks
    labels = [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in zip(blocks.ids.tolist(), blocks.loss_mask.tolist())]
    dataset = Dataset.from_dict({"input_ids": blocks.ids.tolist(), "position_ids": blocks.positions.tolist(),
                                 "labels": labels})
    torch.manual_seed(seed)
    model = add_lora(load_model(model_section), LoraSection(rank=s.rank, alpha=2 * s.rank, dropout=0.0), False)
    model.config.use_cache = False  # packed documents: the mask comes from the position ids, with no cache
    out = Path(tempfile.mkdtemp(prefix="trainer_real-"))
    args = TrainingArguments(
        output_dir=str(out), max_steps=s.steps, per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate,
        warmup_steps=s.warmup_steps, lr_scheduler_type="constant_with_warmup", weight_decay=0.0, max_grad_norm=1.0,
        seed=seed, use_cpu=True, report_to=[], save_strategy="no", logging_steps=10, disable_tqdm=True,
    )
    trainer = SCUTrainer(model=model, args=args, train_dataset=dataset, scu={"target_s": TARGET},
                         tokens_per_epoch=data.tokens_per_epoch)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    held = hdata.load_blocks(work)
    final = {name: block_bpt(model, held[name], s.eval_batch) for name in ("test", "wiki")}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seed": seed, "law": trainer.scu.config.law, "penalty_step": trainer.scu.config.penalty_step,
            "steps": len(rows), "train_wall_s": train_s, "tokens_per_epoch": data.tokens_per_epoch, "final": final,
            "tracking": tracking_of(rows),
            "rows": [{k: r[k] for k in ("step", "s", "s_hat", "lambda", "at_bound")} for r in rows]}


def scu_train_runs() -> list[dict[str, Any]]:
    """The harness's `scu train` runs of the default at the main size, with the same tracking numbers."""
    runs = []
    for path in sorted(SCU_TRAIN_RUNS.glob("seed*.json")):
        d = json.loads(path.read_text())
        runs.append({"seed": d["seed"], "final": {k: d["final"][k] for k in ("test", "wiki")},
                     "tracking": tracking_of(d["rows"]), "train_wall_s": d["train_wall_s"]})
    return runs


def report(trainer_runs: list[dict[str, Any]], base_wiki: float) -> str:
    lines = ["# SCUTrainer under `law: auto` on SmolLM2-135M (dequantized Q4_1), beside `scu train`", "",
             "18k-token Shakespeare slice, 100 steps of 4 × 128 tokens, lr 5e-4, S* 5%; one thread a run. "
             f"Forgetting is WikiText BPT minus the base's ({base_wiki:.4f}). The train wall times come from other "
             "sessions and machine loads, so they are no speed comparison (bench.trainer_overhead is one).", "",
             "| trainer | seed | in band, 2nd half | settled at step | overshoot | mean S, 2nd half | final λ | held-out BPT | forgetting | train wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in (("SCUTrainer", trainer_runs), ("scu train (harness)", scu_train_runs())):
        for r in runs:
            t = r["tracking"]
            lines.append(f"| {name} | {r['seed']} | {t['in_band']:.0%} | {t['settling_step']} | {t['overshoot']:.1%} | "
                         f"{t['mean_s_2nd_half']:.2%} | {t['final_lambda']:.3f} | {r['final']['test']:.4f} | "
                         f"{r['final']['wiki'] - base_wiki:+.4f} | {r['train_wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, action="append", default=None, help="seeds to run (repeatable; default 0)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the cached seeds")
    args = ap.parse_args(argv)
    from bench.harness import real
    from bench.harness import data as hdata
    from bench.scu_vs_baselines import DEFAULT_DATA, REAL_SCALES, prepare_real
    from scu.report.records import atomic_write_json, atomic_write_text

    OUT.mkdir(parents=True, exist_ok=True)
    for seed in [] if args.report_only else (args.seed or [0]):
        path = OUT / f"seed{seed}.json"
        if path.exists():
            print(f"seed {seed}: cached in {path}")
            continue
        atomic_write_json(path, run_seed(seed))
        print(f"seed {seed}: wrote {path}", flush=True)
    scale = REAL_SCALES["real"]
    gguf, _, work = prepare_real(scale, DEFAULT_DATA.resolve())
    base_wiki = real.base_bpt(gguf, hdata.load_blocks(work), scale.run.eval_batch, work / "base_bpt.json")["wiki"]
    cached = [json.loads(p.read_text()) for p in sorted(OUT.glob("seed*.json"))]
    if not cached:
        raise SystemExit("no seed has run yet; run without --report-only first")
    atomic_write_text(OUT / "report.md", report(cached, base_wiki))
    print((OUT / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
