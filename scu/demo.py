"""`scu demo`: a complete SCU experiment on a fresh machine, offline, in a few minutes on 2 CPU cores.

1. Pre-train a small Llama on Python's own standard-library source (cached after the first run).
2. Fine-tune it with LoRA under SCU control on the pydoc reference topics (English prose), with
   validation documents split off at document level.
3. Report where S and lambda ended and the held-out bits per token before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scu import ScuError
from scu.models.tiny import BaseSpec, cached_base

DEMO_BASE = BaseSpec(corpus="stdlib", max_chars=1_500_000, steps=300)


def demo_config(base: Path, train_txt: Path, steps: int) -> dict[str, Any]:
    return {
        "model": {"base_model": str(base)},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "scu": {"target_s": 0.05},
        "training": {"learning_rate": 2e-3, "batch_size": 8, "block_size": 128, "steps": steps,
                     "warmup_steps": 10, "lr_schedule": "constant", "checkpoint_every": 50},
        "data": {"train_data": str(train_txt), "val_fraction": 0.1},
    }


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="offline end-to-end SCU fine-tune of a tiny model (a few minutes on CPU)")
    p.add_argument("--output", default="runs/demo", help="where the data, config and run go (default: %(default)s)")
    p.add_argument("--steps", type=int, default=250, help="LoRA fine-tuning steps (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from scu.config.schema import build_config
    from scu.data.builtin import pydoc_topics
    from scu.data.corpus import load_train_val
    from scu.eval.bpt import block_bpt
    from scu.report.records import atomic_write_text
    from scu.torch.loop import train
    from scu.torch.model import load_model, load_tokenizer

    out = Path(args.output)
    run_dir = out / "run"
    if run_dir.exists():
        raise ScuError(f"{run_dir} already exists; pass another --output or delete it")
    print("[1/3] base model: a small Llama pre-trained on the Python standard library (cached after the first run)")
    base = cached_base(DEMO_BASE)
    print(f"      {base}")
    train_txt = out / "data" / "pydoc_topics.txt"
    atomic_write_text(train_txt, "\n\n".join(pydoc_topics()))
    cfg_dict = demo_config(base, train_txt, args.steps)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    cfg = build_config(cfg_dict)
    print(f"[2/3] SCU LoRA fine-tune on the pydoc topics, S* = {100 * cfg.scu.target_s:g}%  (config: {out / 'config.yaml'})")
    meta = train(cfg, run_dir)
    print("[3/3] held-out evaluation")
    data = load_train_val(cfg.data, load_tokenizer(cfg.model), cfg.training.block_size, cfg.training.seed)
    base_bpt = block_bpt(load_model(cfg.model), data.val_blocks)
    sat = meta["lambda_saturation"]
    print(
        f"\n  S       {100 * meta['final_s_hat']:.2f}% smoothed (target {100 * meta['target_s']:g}%)\n"
        f"  lambda  {meta['final_lambda']:.4g}  (range over the run [{meta['lambda_range'][0]:.3g}, {meta['lambda_range'][1]:.3g}], "
        f"at a bound {100 * (sat['at_min'] + sat['at_max']):.0f}% of steps)\n"
        f"  held-out bits/token: base {base_bpt:.3f} -> adapter {meta['val_bpt']:.3f}  ({data.val_blocks.loss_tokens():,} tokens)\n"
        f"  adapter + metadata.json + metrics.jsonl in {run_dir}\n"
    )
    print("Next:")
    print(f"  scu train --config {out / 'config.yaml'} --output runs/mine      # the same run from its YAML")
    print(f"  python -c \"from peft import PeftModel; from transformers import AutoModelForCausalLM as M; "
          f"PeftModel.from_pretrained(M.from_pretrained('{base}'), '{run_dir}')\"")
    return 0
