"""What the VAC benchmarks share: the WikiText base model, the calibration and evaluation text.

The base is a small Llama pre-trained offline on the shared WikiText-103 subset (scu.models.tiny);
calibration draws from that same text, evaluation is the held-out WikiText-2 validation split
(no article in common; checked document by document before anything runs).
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


def load_data(tokenizer) -> dict:
    """Calibration blocks (profile / held-out for search), recovery blocks, and the evaluation token stream."""
    calib_docs, eval_docs = load_documents(WIKI103), load_documents(WIKI2_VALID)
    check_disjoint(calib_docs, eval_docs, str(WIKI103), str(WIKI2_VALID))
    profile_docs, heldout_docs = calibration_split(calib_docs, 0.1, seed=0)
    return {
        "calib": blocks(profile_docs, tokenizer, SEQ_LEN, CALIB_SAMPLES, seed=0),
        "heldout": blocks(heldout_docs, tokenizer, SEQ_LEN, CALIB_SAMPLES, seed=0),
        "recover": blocks(profile_docs, tokenizer, SEQ_LEN, None, seed=0),
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


def open_bench() -> Bench:
    from transformers import AutoTokenizer

    setup_threads()
    base = base_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    return Bench(base, tokenizer, load_data(tokenizer))
