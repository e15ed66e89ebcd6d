"""SCU inside a transformers Trainer, fully offline.

LoRA on a tiny Llama pre-trained locally on Python's stdlib source (the same base `scu demo`
builds and caches), fine-tuned on pydoc prose. The only SCU-specific line is `SCUTrainer(...,
scu={...})`; scu/data_bpt, scu/param_bpt, scu/s and scu/lambda appear in the Trainer's logs (and in
any `report_to` backend); the output directory gets metrics.jsonl and metadata.json as `scu train`
writes them, and every checkpoint the session state.

    python examples/hf_trainer.py --output runs/hf_trainer
    torchrun --nproc_per_node 2 examples/hf_trainer.py --output runs/hf_trainer_ddp   # same, under DDP
    python examples/hf_trainer.py --output runs/hf_trainer --resume                    # continue from the last checkpoint
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from scu.data.builtin import pydoc_topics
from scu.data.text import pack, tokenize_documents
from scu.demo import DEMO_BASE
from scu.models.tiny import cached_base
from scu.torch.hf import SCUTrainer


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True)
    p.add_argument("--base-model", help="local model directory (default: the cached tiny base, built on first use)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--target-s", type=float, default=0.01)
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    base = args.base_model or str(cached_base(DEMO_BASE))
    tokenizer = AutoTokenizer.from_pretrained(base)
    blocks = pack(tokenize_documents(pydoc_topics(), tokenizer), args.block_size, tokenizer.eos_token_id)
    train = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    training = TrainingArguments(
        output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=2e-3, lr_scheduler_type="cosine", warmup_steps=5, logging_steps=5,
        save_strategy="steps", save_steps=max(1, args.steps // 2), report_to=[], use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = SCUTrainer(model=model, args=training, train_dataset=train, scu={"target_s": args.target_s})
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model()  # adapter + metadata.json + scu_state.json in --output
    last = trainer.scu.last  # the last optimizer step: data_bpt, param_bpt, s, lambda (for the next step)
    if trainer.is_world_process_zero():
        print(f"step {trainer.state.global_step}: data_bpt {last['data_bpt']:.3f}, S {100 * last['s']:.2f}% "
              f"(target {100 * args.target_s:g}%), lambda {last['lambda']:.4g} -> {args.output}")
    return last


if __name__ == "__main__":
    main()
