"""SCU inside TRL's SFTTrainer, fully offline.

Same tiny local base as examples/hf_trainer.py; the data is a plain text dataset (pydoc prose)
that SFTTrainer tokenizes itself. `SCUSFTTrainer` takes every SFTTrainer argument plus `scu=`;
TRL's own metrics (entropy, token accuracy) and SCU's (scu/data_bpt, scu/param_bpt, scu/s,
scu/lambda, ...) share the same log lines.

    python examples/trl_sft.py --output runs/trl_sft
    torchrun --nproc_per_node 2 examples/trl_sft.py --output runs/trl_sft_ddp
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from scu.data.builtin import pydoc_topics
from scu.demo import DEMO_BASE
from scu.models.tiny import cached_base
from scu.torch.hf import SCUSFTTrainer


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True)
    p.add_argument("--base-model", help="local model directory (default: the cached tiny base, built on first use)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--target-s", type=float, default=0.01)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    base = args.base_model or str(cached_base(DEMO_BASE))
    tokenizer = AutoTokenizer.from_pretrained(base)
    train = Dataset.from_dict({"text": pydoc_topics()})

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    config = SFTConfig(
        output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, packing=True, packing_strategy="wrapped",  # keep every token; no truncation
        learning_rate=2e-3, warmup_steps=5, logging_steps=5, save_strategy="steps", save_steps=max(1, args.steps // 2), report_to=[], bf16=False,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
    )
    trainer = SCUSFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                            scu={"target_s": args.target_s})
    trainer.train()
    trainer.save_model()
    last = trainer.scu.last  # the last optimizer step: data_bpt, param_bpt, s, lambda (for the next step)
    if trainer.is_world_process_zero():
        print(f"step {trainer.state.global_step}: data_bpt {last['data_bpt']:.3f}, S {100 * last['s']:.2f}% "
              f"(target {100 * args.target_s:g}%), lambda {last['lambda']:.4g} -> {args.output}")
    return last


if __name__ == "__main__":
    main()
