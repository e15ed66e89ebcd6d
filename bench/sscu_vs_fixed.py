"""S-SCU against the same run with fixed hyperparameters: held-out BPT over seeds.

    python -m bench.sscu_vs_fixed [--base test|demo] [--lr 2e-3] [--steps 400] [--seeds 0 1 2] [--out FILE]

Base: a cached tiny base pre-trained on stdlib code (`test`: the test suite's 2-layer one, `demo`: the
demo's 4-layer one); fine-tune: pydoc prose (code -> prose shift), with a fixed document-level
held-out set (every seed evaluates the same documents). Both arms: LoRA r 8, AdamW at --lr with
warmup and cosine decay, weight decay 0.01, no lambda penalty. The S-SCU arm adds the
controller with its defaults (or `--sscu KEY=VALUE ...`); its reg_factor scales the weight decay.
Arms run interleaved (fixed, sscu, fixed, sscu, ...). Prints per-seed BPT, the paired differences and
a verdict, and writes everything, including each S-SCU run's actions, to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from scu.config.schema import build_config
from scu.data.builtin import pydoc_topics
from scu.data.text import split_documents
from scu.models.tiny import BaseSpec, TEST_BASE, cached_base
from scu.report.records import atomic_write_json
from scu.torch.loop import train

BASES = {
    "test": TEST_BASE,
    "demo": BaseSpec(corpus="stdlib", max_chars=1_500_000, steps=300),
}


def write_data(work: Path) -> tuple[Path, Path]:
    train_docs, val_docs = split_documents(pydoc_topics(), 0.15, 0)
    paths = work / "train.jsonl", work / "val.jsonl"
    for path, docs in zip(paths, (train_docs, val_docs)):
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return paths


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", choices=sorted(BASES), default="test")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sscu", nargs="*", default=[], metavar="KEY=VALUE", help="S-SCU settings other than the defaults")
    ap.add_argument("--out", default="bench/results/sscu_vs_fixed.json")
    args = ap.parse_args()
    sscu = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.sscu)}
    base = cached_base(BASES[args.base], progress=False)
    work = Path(tempfile.mkdtemp(prefix="sscu_vs_fixed-"))
    train_path, val_path = write_data(work)
    runs: dict[str, list[dict]] = {"fixed": [], "sscu": []}
    for seed in args.seeds:
        for arm in ("fixed", "sscu"):
            cfg = build_config({
                "model": {"base_model": str(base)},
                "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
                "scu": {"enabled": False},
                "sscu": {"enabled": arm == "sscu", **sscu},
                "training": {"learning_rate": args.lr, "batch_size": 8, "block_size": 128, "steps": args.steps,
                             "warmup_steps": 20, "lr_schedule": "cosine", "weight_decay": 0.01, "seed": seed,
                             "checkpoint_every": 10**9},
                "data": {"train_data": str(train_path), "val_data": str(val_path)},
            })
            out = work / f"{arm}-seed{seed}"
            meta = train(cfg, out, progress=False)
            run = {"seed": seed, "val_bpt": meta["val_bpt"], "tokens_seen": meta["tokens_seen"],
                   "wall_time_s": meta["wall_time_s"]}
            if arm == "sscu":
                summary = json.loads((out / "scu_training_summary.json").read_text())
                actions = json.loads((out / "scu_training_metrics.json").read_text())["actions"]
                run |= {"actions_by_rule": summary["actions_by_rule"], "reasons": [a["reason"] for a in actions],
                        "final_factors": {k: summary[k] for k in ("final_lr_factor", "final_reg_factor",
                                                                  "final_grad_clip_factor", "final_grad_accum")}}
            runs[arm].append(run)
            print(f"seed {seed} {arm:5s} held-out BPT {meta['val_bpt']:.4f}  tokens {meta['tokens_seen']:,}", flush=True)
    fixed = [r["val_bpt"] for r in runs["fixed"]]
    ctrl = [r["val_bpt"] for r in runs["sscu"]]
    diffs = [c - f for c, f in zip(ctrl, fixed)]
    n = len(diffs)
    se = statistics.stdev(diffs) / n**0.5 if n > 1 else float("nan")
    spread = statistics.stdev(fixed) if n > 1 else float("nan")
    mean_diff = statistics.fmean(diffs)
    worse = mean_diff > 0 and mean_diff > max(2 * se, spread)
    verdict = "S-SCU worse beyond seed noise" if worse else "S-SCU not worse beyond seed noise"
    result = {
        "base": args.base, "lr": args.lr, "steps": args.steps, "seeds": args.seeds, "sscu_overrides": sscu,
        "fixed_val_bpt": fixed, "sscu_val_bpt": ctrl, "paired_diff_sscu_minus_fixed": diffs,
        "mean_fixed": statistics.fmean(fixed), "mean_sscu": statistics.fmean(ctrl), "mean_diff": mean_diff,
        "se_diff": se, "fixed_seed_std": spread, "verdict": verdict, "runs": runs,
        "rule": "worse beyond seed noise: mean paired diff > 0 and > max(2 SE of the paired diffs, std of the fixed arm)",
    }
    print(f"held-out BPT  fixed {result['mean_fixed']:.4f} (seed std {spread:.4f})  S-SCU {result['mean_sscu']:.4f}  "
          f"S-SCU - fixed {mean_diff:+.4f} +- {se:.4f} (SE)  -> {verdict}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
