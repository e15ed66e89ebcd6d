"""What SCUTrainer adds to a transformers.Trainer step: the same LoRA fine-tune with SCUTrainer and with Trainer.

    python -m bench.trainer_overhead [--steps 200] [--base demo|test] [--law auto|pi] [--control] [--out FILE]

Both trainers run in one process, each in its own thread, and take turns so that their optimizer
steps never overlap and alternate in pairs whose order flips every pair (SCU, plain | plain, SCU |
...): machine noise and any first-in-pair advantage hit both arms alike. A step is timed from
on_step_begin to on_step_end (forward, backward, clipping, optimizer, scheduler; for SCUTrainer also
the penalty and the controller step). Reports the median of per-pair time ratios (SCU / plain), the
same per order and their geometric mean ("balanced": cancels a first-in-pair advantage), the ratio
of median step times, and SCU's own work timed alone. `--control` runs plain against
plain: the harness's noise floor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from bench.scu_overhead import BASES
from scu.data.builtin import pydoc_topics
from scu.data.text import pack, tokenize_documents
from scu.models.tiny import cached_base
from scu.report.records import atomic_write_json
from scu.torch.hf import SCUTrainer


class Turns:
    """The step order of the two arms: pair k runs (0, 1) for even k and (1, 0) for odd k."""

    def __init__(self, steps: int) -> None:
        self.order = [arm for k in range(steps) for arm in ((0, 1) if k % 2 == 0 else (1, 0))]
        self.pos, self.failed, self.cond = 0, False, threading.Condition()

    def wait(self, arm: int) -> bool:
        """Block until it is `arm`'s turn; False if the other arm died (then stop instead of waiting forever)."""
        with self.cond:
            while not self.failed and self.order[self.pos] != arm:
                self.cond.wait()
            return not self.failed

    def advance(self, failed: bool = False) -> None:
        with self.cond:
            self.pos += not failed
            self.failed = self.failed or failed
            self.cond.notify_all()


class Baton(TrainerCallback):
    """Wait for our turn at each step's start, time the step, pass the turn on at its end."""

    def __init__(self, arm: int, turns: Turns) -> None:
        self.arm, self.turns, self.times, self.t0 = arm, turns, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.turns.wait(self.arm):
            control.should_training_stop = True
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.t0)
        self.turns.advance()


def scu_parts(trainer: SCUTrainer, reps: int) -> float:
    """Median time of exactly what SCU adds per optimizer step, timed alone: penalty, its backward, (law: balance)
    the gradient balance and the decoupled penalty step, scu.step()."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        penalty = trainer.scu.penalty()
        if penalty.requires_grad:  # under the decoupled step the penalty is not in the loss
            penalty.backward()
        trainer.scu.before_optimizer_step(trainer.optimizer)
        trainer.scu.step(ce_sum=torch.tensor(1000.0), tokens=torch.tensor(1000))
        times.append(time.perf_counter() - t0)
    trainer.model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--base", choices=list(BASES), default="demo")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--accumulation", type=int, default=1)
    ap.add_argument("--law", choices=("auto", "pi"), default="auto",
                    help="SCUTrainer's law: the default auto (the balance law and the decoupled penalty step) or pi")
    ap.add_argument("--control", action="store_true", help="plain Trainer against plain Trainer (noise floor)")
    ap.add_argument("--out", default="bench/results/trainer_overhead.json")
    args = ap.parse_args()
    base = cached_base(BASES[args.base])
    tokenizer = AutoTokenizer.from_pretrained(base)
    blocks = pack(tokenize_documents(pydoc_topics(), tokenizer), args.block_size, tokenizer.eos_token_id)
    data = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    work = Path(tempfile.mkdtemp(prefix="trainer_overhead-"))

    def make(cls, baton: Baton, **extra):
        torch.manual_seed(0)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
        targs = TrainingArguments(
            output_dir=str(work / cls.__name__), max_steps=args.steps + args.warmup,
            per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
            learning_rate=2e-3, lr_scheduler_type="constant", logging_steps=10, save_strategy="no", report_to=[],
            use_cpu=True, disable_tqdm=True, seed=0,
        )
        return cls(model=model, args=targs, train_dataset=data, callbacks=[baton], **extra)

    arms = ["plain", "plain"] if args.control else ["scu", "plain"]
    turns = Turns(args.steps + args.warmup)
    batons = [Baton(0, turns), Baton(1, turns)]
    trainers = [make(SCUTrainer, baton, scu={"target_s": 0.05, "law": args.law}) if arm == "scu" else make(Trainer, baton)
                for arm, baton in zip(arms, batons)]
    errors: list[BaseException] = []

    def train(trainer) -> None:
        try:
            trainer.train()
        except BaseException as e:
            errors.append(e)
            turns.advance(failed=True)

    threads = [threading.Thread(target=train, args=(t,)) for t in trainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    first, second = (b.times[args.warmup :] for b in batons)
    scu_trainer = next((t for t in trainers if isinstance(t, SCUTrainer)), None)
    ratios = [a / b for a, b in zip(first, second)]
    # pair k ran arm 0 first when (k + warmup) is even: the median ratio per order, and their geometric mean,
    # which cancels any advantage of going first in a pair
    by_order = [statistics.median(r for k, r in enumerate(ratios) if (k + args.warmup) % 2 == o) for o in (0, 1)]
    params = sum(p.numel() for p in trainers[0].model.parameters())
    result = {
        "arms": arms,
        "law": None if args.control else scu_trainer.scu.config.law,
        "base": args.base,
        "params": params,
        "batch": [args.batch_size, args.block_size],
        "gradient_accumulation": args.accumulation,
        "steps": len(ratios),
        "torch_threads": torch.get_num_threads(),
        "median_step_s": [statistics.median(first), statistics.median(second)],
        "median_pair_ratio": statistics.median(ratios),
        "ratio_of_medians": statistics.median(first) / statistics.median(second),
        "median_pair_ratio_by_order": {"arm0_first": by_order[0], "arm1_first": by_order[1]},
        "order_balanced_ratio": (by_order[0] * by_order[1]) ** 0.5,
        "step_s": {f"{arms[0]}_0": first, f"{arms[1]}_1": second},
    }
    if scu_trainer is not None:
        result["scu_parts_median_s"] = scu_parts(scu_trainer, 200)
    print(f"base {args.base} ({params:,} params), batch {args.batch_size}x{args.block_size}, "
          f"accumulation {args.accumulation}, {len(ratios)} step pairs (order flips every pair)")
    print(f"median step: {arms[0]} {1e3 * result['median_step_s'][0]:.2f} ms, {arms[1]} {1e3 * result['median_step_s'][1]:.2f} ms")
    if scu_trainer is not None:
        plain = result["median_step_s"][arms.index("plain")]
        print(f"SCU's own work (penalty forward+backward, controller step): {1e3 * result['scu_parts_median_s']:.2f} ms "
              f"= {100 * result['scu_parts_median_s'] / plain:.2f}% of a plain step")
    print(f"{arms[0]} / {arms[1]}: median per-pair ratio {result['median_pair_ratio']:.4f} "
          f"({by_order[0]:.4f} when {arms[0]} ran first, {by_order[1]:.4f} when second; "
          f"balanced {result['order_balanced_ratio']:.4f}), ratio of medians {result['ratio_of_medians']:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
