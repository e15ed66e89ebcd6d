"""Build small Llama-architecture base models offline, with a cache.

Everything that needs a base model without a download (the demo, tests, evaluation,
compression and benchmarks) calls `cached_base(spec)`: it trains a byte-level BPE
tokenizer and briefly pre-trains a tiny Llama on the spec's corpus, saves both with
`save_pretrained`, and reuses the directory on later calls. Same spec, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from scu.data.text import load_documents, pack, tokenize_documents
from scu.report.records import staging_dir

EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class BaseSpec:
    """Everything that determines a cached base model. Change a field, get a new model."""

    corpus: str = "stdlib"  # "stdlib", "pydoc", or a path to a .txt/.jsonl file
    max_chars: int = 1_500_000
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 344
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    block_size: int = 128
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# the smallest base: the test suite and the controller benchmarks train on it (2 layers, hidden 64, stdlib code)
TEST_BASE = BaseSpec(max_chars=400_000, steps=120, hidden_size=64, intermediate_size=172, layers=2)


def cache_root() -> Path:
    return Path(os.environ.get("SCU_CACHE", Path.home() / ".cache" / "scu"))


def corpus_documents(corpus: str, max_chars: int) -> list[str]:
    from scu.data import builtin

    if corpus == "stdlib":
        return builtin.stdlib_code(max_chars)
    if corpus == "pydoc":
        docs = builtin.pydoc_topics()
    else:
        docs = load_documents(corpus)
    out, total = [], 0
    for d in docs:
        if total + len(d) > max_chars:
            break
        out.append(d)
        total += len(d)
    return out


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `docs`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(spec: BaseSpec, vocab_size: int):
    """An untrained Llama with the spec's dimensions (about 1M parameters by default)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=max(spec.block_size, 2048),
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def pretrain(model, blocks: np.ndarray, spec: BaseSpec, progress: bool = True) -> list[float]:
    """Full-parameter causal-LM training with AdamW and a cosine schedule; returns the losses."""
    import torch

    data = torch.from_numpy(blocks)
    g = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    warmup = max(1, spec.steps // 20)
    losses = []
    model.train()
    bar = tqdm(range(spec.steps), desc="pre-training base", disable=not progress, leave=False)
    for step in bar:
        lr = spec.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (spec.batch_size,), generator=g)
        batch = data[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def cached_base(spec: BaseSpec = BaseSpec(), progress: bool = True) -> Path:
    """Directory of a pre-trained base model and tokenizer for `spec`, built once and cached."""
    target = cache_root() / "bases" / spec.key()
    if (target / "spec.json").exists():
        return target
    docs = corpus_documents(spec.corpus, spec.max_chars)
    tokenizer = train_tokenizer(docs, spec.vocab_size)
    blocks = pack(tokenize_documents(docs, tokenizer), spec.block_size, tokenizer.eos_token_id)
    model = tiny_llama(spec, len(tokenizer))
    losses = pretrain(model, blocks, spec, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(target.parent, f".{spec.key()}-")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "spec.json").write_text(json.dumps({**asdict(spec), "final_loss": losses[-1]}, indent=2))
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target
