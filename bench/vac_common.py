"""What the VAC benchmarks share: the base model, the calibration and evaluation text.

The default base is a small Llama pre-trained offline on the shared WikiText-103 subset
(scu.models.tiny); `smollm2` is the real pretrained SmolLM2-135M (dequantized Q4_1, scu.models.gguf).
Calibration draws from the WikiText-103 subset, evaluation is the held-out WikiText-2 validation
split (no article in common; checked document by document before anything runs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scu.data.text import load_documents
from scu.models.tiny import BaseSpec, cached_base
from scu.vac.data import blocks, calibration_split, check_disjoint
from scu.vac.evaluate import token_stream

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext"
WIKI103 = DATA / "wiki103_subset.txt"
WIKI2_VALID = DATA / "wiki2_valid.txt"
RESULTS = Path(__file__).resolve().parent / "results"

BASE = BaseSpec(
    corpus=str(WIKI103), max_chars=2_400_000, vocab_size=2048, hidden_size=192, intermediate_size=512,
    layers=4, heads=4, kv_heads=4, block_size=128, steps=2000, batch_size=16, lr=3e-3, seed=0,
)
SEQ_LEN = 128  # the base's training context; calibration blocks and evaluation windows
CALIB_SAMPLES = 64


def setup_threads() -> None:
    """One thread: on a shared 2-core machine, two busy-waiting threads per process are many times slower."""
    torch.set_num_threads(int(os.environ.get("VAC_BENCH_THREADS", "1")))


def load_data(tokenizer, seq_len: int = SEQ_LEN, calib_samples: int = CALIB_SAMPLES) -> dict:
    """Calibration blocks (profile / held-out for search), recovery blocks, and the evaluation token stream."""
    calib_docs, eval_docs = load_documents(WIKI103), load_documents(WIKI2_VALID)
    check_disjoint(calib_docs, eval_docs, str(WIKI103), str(WIKI2_VALID))
    profile_docs, heldout_docs = calibration_split(calib_docs, 0.1, seed=0)
    return {
        "calib": blocks(profile_docs, tokenizer, seq_len, calib_samples, seed=0),
        "heldout": blocks(heldout_docs, tokenizer, seq_len, calib_samples, seed=0),
        "recover": blocks(profile_docs, tokenizer, seq_len, None, seed=0),
        "eval_ids": token_stream(eval_docs, tokenizer),
    }


def base_dir() -> Path:
    return cached_base(BASE, progress=False)


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class Bench:
    """What every VAC benchmark starts from: the base model's directory, its tokenizer and the data."""

    base: Path
    tokenizer: Any
    data: dict

    def fresh(self) -> torch.nn.Module:
        """A new float32 copy of the dense base, in eval mode."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32).eval()


def open_bench(model: str = "wikitext", seq_len: int = SEQ_LEN, calib_samples: int = CALIB_SAMPLES) -> Bench:
    """The WikiText base (`wikitext`) or SmolLM2-135M (`smollm2`, its cached dequantized directory), with the data."""
    from transformers import AutoTokenizer

    from scu.models.gguf import dense_dir, smollm2_gguf

    setup_threads()
    base = dense_dir(smollm2_gguf()) if model == "smollm2" else base_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    return Bench(base, tokenizer, load_data(tokenizer, seq_len, calib_samples))
