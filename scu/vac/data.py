"""Calibration text for compression: kept apart from evaluation text, split for held-out fitness.

Disjointness is checked on documents, not files: an evaluation document that also occurs in the
calibration text (after folding case and white space), or that shares most of its word 13-grams
with it (a near copy), makes `scu compress` refuse. Short shared phrases ("according to the United
States Census Bureau") are normal between different articles and are not counted as overlap.
"""

from __future__ import annotations

import re
import numpy as np
import torch

from scu import ScuError
from scu.data.text import overlapping_documents, pack, split_documents, tokenize_documents

NGRAM = 13
NEAR_COPY_FRACTION = 0.5


def _ngrams(doc: str) -> set[int]:
    words = re.findall(r"\w+", doc.lower())
    return {hash(tuple(words[i : i + NGRAM])) for i in range(len(words) - NGRAM + 1)}


def overlapping_eval_documents(calib: list[str], evaluation: list[str]) -> list[int]:
    """Indices of evaluation documents that occur in, or are near copies of, the calibration text."""
    exact = set(overlapping_documents(calib, evaluation))
    seen: set[int] = set()
    for d in calib:
        seen |= _ngrams(d)
    near = set()
    for i, d in enumerate(evaluation):
        grams = _ngrams(d)
        if grams and len(grams & seen) / len(grams) >= NEAR_COPY_FRACTION:
            near.add(i)
    return sorted(exact | near)


def check_disjoint(calib: list[str], evaluation: list[str], calib_name: str, eval_name: str) -> None:
    """Refuse calibration text that contains any of the evaluation documents."""
    bad = overlapping_eval_documents(calib, evaluation)
    if bad:
        example = " ".join(evaluation[bad[0]].split())[:60]
        raise ScuError(
            f"{len(bad)} evaluation document(s) in {eval_name} also occur in the calibration text {calib_name} "
            f"(first: {example!r}); calibrate on text that is not in the evaluation set"
        )


def calibration_split(docs: list[str], heldout_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(profile documents, held-out documents): the held-out part scores search candidates."""
    if len(docs) < 2:
        raise ScuError("the calibration text has fewer than 2 documents; give more text (blank-line separated)")
    return split_documents(docs, heldout_fraction, seed)


def blocks(docs: list[str], tokenizer, seq_len: int, max_blocks: int | None, seed: int = 0) -> torch.Tensor:
    """[n, seq_len] token blocks packed from `docs`, at most `max_blocks`, drawn evenly at random."""
    packed = pack(tokenize_documents(docs, tokenizer), seq_len, tokenizer.eos_token_id)
    if max_blocks is not None and len(packed) > max_blocks:
        idx = np.sort(np.random.default_rng(seed).choice(len(packed), max_blocks, replace=False))
        packed = packed[idx]
    return torch.from_numpy(np.ascontiguousarray(packed))

