"""λ-equilibrium auto-stop over seeds: where it fires, and what the adapter there is worth.

    python -m bench.equilibrium [--seeds 0 1 2] [--budget 600] [--rich-steps 400] [--lambda-tolerance 0.05] [--out FILE]

Base: the test suite's tiny base (2-layer Llama pre-trained on stdlib code). Fine-tune: LoRA r 4 on
pydoc prose under SCU (S* = 5%, deadband 0 unless --deadband), held-out BPT every 25 steps.

* over-budget: the first 4 pydoc topics (~7k tokens, 28 steps per epoch) for --budget steps. Each
  seed runs twice: to the end (equilibrium recorded only) and with auto-stop. Reported: the
  equilibrium step, the auto-stopped adapter's held-out BPT, the best held-out BPT of the full run
  (any evaluation), the base model's, and the share of the full run's gain the stopped adapter has.
* data-rich: all 79 topics (~200k tokens) for --rich-steps, auto-stop on: does it fire?

Writes everything to --out (default bench/results/equilibrium.json).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from scu.config.schema import build_config
import numpy as np

from scu.core.equilibrium import EquilibriumConfig, EquilibriumDetector, telemetry_from_rows
from scu.data.builtin import pydoc_topics
from scu.data.corpus import load_train_val
from scu.eval.bpt import block_bpt
from scu.models.tiny import TEST_BASE, cached_base
from scu.report.records import MetricsLog, atomic_write_json
from scu.torch.loop import train
from scu.torch.model import load_model, load_tokenizer


def config(base: Path, text: Path, steps: int, seed: int, deadband: float, auto_stop: bool, eval_every: int,
           lambda_tolerance: float):
    cfg = build_config({
        "model": {"base_model": str(base)},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "scu": {"target_s": 0.05, "law": "pi", "deadband": deadband},  # pi: the law its results were measured with
        "training": {"learning_rate": 2e-3, "batch_size": 4, "block_size": 64, "steps": steps, "warmup_steps": 2,
                     "checkpoint_every": 100_000, "eval_every": eval_every, "seed": seed},
        "data": {"train_data": str(text)},
    })
    cfg.equilibrium = EquilibriumConfig(auto_stop=auto_stop, lambda_tolerance=lambda_tolerance)
    return cfg


def val_curve(run_dir: Path, meta: dict) -> dict[int, float]:
    rows = MetricsLog(run_dir / "metrics.jsonl").read()
    curve = {r["step"]: r["val_bpt"] for r in rows if "val_bpt" in r}
    curve[meta["steps"]] = meta["val_bpt"]
    return curve


def signal_spread(run_dir: Path, after: int) -> dict[str, list[float]]:
    """5th/50th/95th percentiles of the three window signals at every step after `after` (tolerances off)."""
    rows = MetricsLog(run_dir / "metrics.jsonl").read()
    detector = EquilibriumDetector(EquilibriumConfig(lambda_tolerance=1e9, s_tolerance=1e9, loss_tolerance=1e9))
    seen = {"lambda_change": [], "s_error": [], "loss_change": []}
    for t in telemetry_from_rows(rows):
        detector.equilibrium_step = None  # keep measuring past the first "firing"
        detector.step(t)
        if detector.signals is not None and detector.signals.step == t.step and t.step > after:
            for key in seen:
                seen[key].append(getattr(detector.signals, key))
    return {k: [float(q) for q in np.percentile(v, [5, 50, 95])] for k, v in seen.items() if v}


def over_budget(base: Path, work: Path, seed: int, budget: int, deadband: float, lambda_tolerance: float) -> dict:
    text = work / "pydoc4.txt"
    text.write_text("\n\n".join(pydoc_topics()[:4]))
    full_cfg = config(base, text, budget, seed, deadband, False, 25, lambda_tolerance)
    full = train(full_cfg, work / f"full{seed}", progress=False)
    stop = train(config(base, text, budget, seed, deadband, True, 25, lambda_tolerance), work / f"auto{seed}", progress=False)
    curve = val_curve(work / f"full{seed}", full)
    best_step = min(curve, key=curve.get)
    data = load_train_val(full_cfg.data, load_tokenizer(full_cfg.model), 64, seed)
    base_bpt = block_bpt(load_model(full_cfg.model), data.val_blocks)
    gain = base_bpt - curve[best_step]
    return {
        "seed": seed, "deadband": deadband, "budget": budget, "tokens_per_epoch": full["tokens_per_epoch"],
        "equilibrium_step_full_run": full["equilibrium_step"], "auto_stop_step": stop["steps"],
        "status": stop["status"], "val_bpt_at_stop": stop["val_bpt"], "best_val_bpt": curve[best_step],
        "best_step": best_step, "final_val_bpt": full["val_bpt"], "base_val_bpt": base_bpt,
        "gap_to_best": stop["val_bpt"] / curve[best_step] - 1, "share_of_gain": (base_bpt - stop["val_bpt"]) / gain,
        "steps_saved": 1 - stop["steps"] / budget,
        "signals_after_equilibrium_p5_p50_p95": signal_spread(work / f"full{seed}", full["equilibrium_step"] or budget),
    }


def data_rich(base: Path, work: Path, seed: int, steps: int, lambda_tolerance: float) -> dict:
    text = work / "pydoc79.txt"
    text.write_text("\n\n".join(pydoc_topics()))
    meta = train(config(base, text, steps, seed, 0.0, True, 100, lambda_tolerance), work / f"rich{seed}", progress=False)
    return {"seed": seed, "steps": meta["steps"], "status": meta["status"], "equilibrium_step": meta["equilibrium_step"],
            "tokens_per_epoch": meta["tokens_per_epoch"], "val_bpt": val_curve(work / f"rich{seed}", meta),
            "signals_last_window": signal_spread(work / f"rich{seed}", steps - 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=600)
    p.add_argument("--rich-steps", type=int, default=400)
    p.add_argument("--deadband", type=float, default=0.0)
    p.add_argument("--lambda-tolerance", type=float, default=EquilibriumConfig.lambda_tolerance,
                   help="the detector's λ tolerance (default: the product's)")
    p.add_argument("--out", default="bench/results/equilibrium.json")
    args = p.parse_args()
    base = cached_base(TEST_BASE, progress=False)
    results = {"over_budget": [], "data_rich": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = over_budget(base, Path(tmp), seed, args.budget, args.deadband, args.lambda_tolerance)
            results["over_budget"].append(r)
            print(f"over-budget seed {seed}: stop at {r['auto_stop_step']}/{args.budget} (full run recorded "
                  f"{r['equilibrium_step_full_run']}); held-out {r['val_bpt_at_stop']:.4f} vs best {r['best_val_bpt']:.4f} "
                  f"at step {r['best_step']} ({100 * r['gap_to_best']:+.2f}%), base {r['base_val_bpt']:.4f}, "
                  f"{100 * r['share_of_gain']:.0f}% of the gain, {100 * r['steps_saved']:.0f}% of the steps saved; "
                  f"signals after equilibrium (p5/p50/p95) {r['signals_after_equilibrium_p5_p50_p95']}", flush=True)
        for seed in args.seeds[:2]:
            r = data_rich(base, Path(tmp), seed, args.rich_steps, args.lambda_tolerance)
            results["data_rich"].append(r)
            print(f"data-rich seed {seed}: {r['status']} after {r['steps']} steps, equilibrium {r['equilibrium_step']}, "
                  f"held-out {', '.join(f'{k}: {v:.4f}' for k, v in r['val_bpt'].items())}; "
                  f"signals at the end {r['signals_last_window']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"args": vars(args), **results})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
