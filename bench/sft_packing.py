"""SFT on packed chat data: what assistant-only loss and per-document attention do to held-out quality.

    PYTHONPATH=. python -m bench.sft_packing [--seeds 2] [--steps 200] [--out bench/results/sft_packing]

Chat data from Shakespeare, read in order: conversation k asks "Continue the play after this speech:" with
paragraph k and is answered with paragraph k+1. The first 85% of the paragraphs give the training
conversations, the last 15% the held-out ones. The tiny harness base (pre-trained on WikiText-103) is
fine-tuned with plain LoRA (SCU off, so only the data path differs) through `scu train`'s entry point:

- `assistant, per-document`: the product's default (data.train_on: assistant; packed conversations attend
  to themselves only, through per-document position ids);
- `all tokens, per-document`: data.train_on: all (the loss also on the prompts and the template's tokens);
- `assistant, across documents`: the default mask, but each block attends across the conversations packed
  into it (positions run on through the block, as packing without document boundaries does).

Every arm is scored the same way: held-out bits per token on the assistant tokens of the held-out
conversations, each conversation attending to itself only (how a chat model is queried). Results per run
are cached under `--out/runs/`, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any


from scu.config.schema import ModelSection, build_config
from scu.data.chat import tokenize_examples
from scu.data.text import Blocks, Chat, pack_documents, split_txt
from scu.driver import Callback
from scu.eval.bpt import block_bpt
from scu.models.tiny import cache_root, cached_base
from scu.report.records import atomic_write_json
from scu.torch.loop import train
from scu.torch.model import load_model, load_tokenizer

from bench.scu_vs_baselines import DEFAULT_DATA, SCALES

PROMPT = "Continue the play after this speech:\n"
ARMS = {
    "assistant, per-document": {"train_on": "assistant", "across": False},
    "all tokens, per-document": {"train_on": "all", "across": False},
    "assistant, across documents": {"train_on": "assistant", "across": True},
}


def conversations(data_dir: Path, held_out_share: float = 0.15) -> tuple[list[dict], list[dict]]:
    paras = split_txt((data_dir / "shakespeare" / "input.txt").read_text(encoding="utf-8"))
    rows = [{"messages": [{"role": "user", "content": PROMPT + a}, {"role": "assistant", "content": b}]}
            for a, b in zip(paras, paras[1:])]
    cut = int(len(rows) * (1 - held_out_share))
    return rows[: cut - 1], rows[cut:]  # one conversation dropped: its reply is the next one's prompt


def held_out_blocks(rows: list[dict], tokenizer: Any, block_size: int) -> Blocks:
    chats = [Chat(tokenizer.apply_chat_template(r["messages"], tokenize=False), r["messages"], f"held-out:{i}")
             for i, r in enumerate(rows)]
    ids, trained = tokenize_examples(chats, tokenizer, "assistant")
    return pack_documents(ids, block_size, tokenizer.eos_token_id, trained)


class AcrossDocuments(Callback):
    """Positions run on through each block, so the model attends across the conversations packed into it."""

    def on_train_begin(self, run: Any) -> None:
        b = run.data.train_blocks
        run.data.train_blocks = Blocks(b.ids, Blocks.of_ids(b.ids).positions, b.loss_mask)


class Score(Callback):
    def __init__(self, blocks: Blocks, every: int) -> None:
        self.blocks, self.every, self.curve = blocks, every, {}

    def on_step_end(self, run: Any, row: dict[str, Any]) -> None:
        if row["step"] % self.every == 0:
            self.curve[row["step"]] = block_bpt(run.model, self.blocks)


def run_arm(arm: str, seed: int, base: Path, train_path: Path, held_out: Blocks, steps: int) -> dict[str, Any]:
    s = SCALES["cpu"].run
    cfg = build_config({
        "model": {"base_model": str(base)},
        "lora": {"rank": s.rank, "alpha": 2 * s.rank, "dropout": 0.0},
        "scu": {"enabled": False},
        "training": {"learning_rate": s.learning_rate, "batch_size": s.batch_size, "block_size": s.block_size,
                     "steps": steps, "warmup_steps": s.warmup_steps, "lr_schedule": "constant", "weight_decay": 0.0,
                     "seed": seed, "checkpoint_every": 10**9, "eval_every": 0},
        "data": {"train_data": str(train_path), "val_fraction": 0.0, "train_on": ARMS[arm]["train_on"]},
    })
    score = Score(held_out, max(1, steps // 4))
    callbacks = [AcrossDocuments()] if ARMS[arm]["across"] else []
    work = Path(tempfile.mkdtemp(prefix="sft-packing-"))
    try:
        meta = train(cfg, work / "run", progress=False, callbacks=[*callbacks, score])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"arm": arm, "seed": seed, "steps": steps, "tokens_per_epoch": meta["tokens_per_epoch"],
            "held_out_bpt": score.curve[max(score.curve)], "curve": score.curve}


def report(results: list[dict[str, Any]], base_bpt: float, held_out_tokens: int, out: Path) -> str:
    lines = ["# SFT on packed chat data: loss mask and document attention (tiny harness base)", "",
             f"Held-out: assistant tokens of held-out Shakespeare conversations ({held_out_tokens:,} targets), each "
             f"conversation attending to itself only. Base model: {base_bpt:.4f} bits/token.", "",
             "| arm | seeds | loss tokens per epoch | held-out BPT (final) | best along the way | vs default |",
             "|---|---|---|---|---|---|"]
    finals = {a: [r["held_out_bpt"] for r in results if r["arm"] == a] for a in ARMS}
    ref = statistics.mean(finals["assistant, per-document"]) if finals["assistant, per-document"] else None
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        if not rows:
            continue
        f = finals[arm]
        best = [min(r["curve"].values()) for r in rows]
        spread = f" ± {statistics.stdev(f):.4f}" if len(f) > 1 else ""
        rel = f"{100 * (statistics.mean(f) / ref - 1):+.2f}%" if ref else "—"
        lines.append(f"| {arm} | {len(rows)} | {rows[0]['tokens_per_epoch']:,} | {statistics.mean(f):.4f}{spread} | "
                     f"{statistics.mean(best):.4f} | {rel} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    atomic_write_json(out / "results.json", {"base_bpt": base_bpt, "held_out_tokens": held_out_tokens, "runs": results})
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("bench/results/sft_packing"))
    args = ap.parse_args(argv)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    base = cached_base(SCALES["cpu"].base, progress=False)
    tokenizer = load_tokenizer(ModelSection(base_model=str(base)))
    train_rows, held_rows = conversations(args.data_dir)
    train_path = cache_root() / "sft_packing" / "train.jsonl"
    train_path.parent.mkdir(parents=True, exist_ok=True)
    train_path.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    held_out = held_out_blocks(held_rows, tokenizer, SCALES["cpu"].run.block_size)
    base_bpt = block_bpt(load_model(ModelSection(base_model=str(base))), held_out)
    results = []
    for seed in range(args.seeds):
        for arm in ARMS:
            cache = args.out / "runs" / f"{arm.replace(', ', '_').replace(' ', '-')}_seed{seed}_steps{args.steps}.json"
            if cache.exists():
                result = json.loads(cache.read_text())
            else:
                print(f"{arm}, seed {seed}: training {args.steps} steps", flush=True)
                result = run_arm(arm, seed, base, train_path, held_out, args.steps)
                atomic_write_json(cache, result)
            results.append(result)
            report(results, base_bpt, held_out.loss_tokens(), args.out)
    print(report(results, base_bpt, held_out.loss_tokens(), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
