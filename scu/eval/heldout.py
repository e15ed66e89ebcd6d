"""Held-out bits per token of whole documents, with bootstrap confidence intervals over documents.

Every document is scored on its own. A window of at most `block_size` tokens predicts each of its
tokens from the ones before it in the window; windows start every `stride` tokens, and each token
is scored once, by the first window that has context for it:

* stride = block_size (default): the text is cut into consecutive blocks, and every token except
  the first of each block is scored (the block-chunked protocol the training loop uses);
* stride < block_size: a sliding window; every token but the document's first is scored, each
  with at least block_size - stride tokens of context (where the document has them).

BPT is token-weighted: the nats summed over all scored tokens of all documents, divided by their
number and by ln 2; perplexity is 2 ** BPT. Nothing is truncated. Confidence intervals resample
documents with replacement (the same resamples for every model, so differences are paired).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scu.core.bits import LN2


@dataclass(frozen=True)
class Window:
    doc: int
    begin: int  # first token of the window in the document
    end: int  # one past its last token
    first_scored: int  # first token (document position) whose prediction counts


def windows(doc: int, n_tokens: int, block_size: int, stride: int) -> list[Window]:
    """The windows of one document; together they score positions 1..n-1 at most once each."""
    if not 1 <= stride <= block_size:
        raise ValueError(f"need 1 <= stride <= block_size, got stride {stride}, block_size {block_size}")
    out, scored_to, begin = [], 0, 0
    while scored_to < n_tokens:
        end = min(begin + block_size, n_tokens)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append(Window(doc, begin, end, first))
        scored_to = end
        begin += stride
    return out


@dataclass
class DocumentScores:
    """Per document: summed nats and number of scored tokens."""

    nats: np.ndarray  # float64 [n_docs]
    tokens: np.ndarray  # int64 [n_docs]

    @property
    def bpt(self) -> float:
        return float(self.nats.sum() / self.tokens.sum() / LN2)

    @property
    def perplexity(self) -> float:
        return float(2.0**self.bpt)


@torch.no_grad()
def score_documents(
    model: nn.Module, docs: list[list[int]], block_size: int, stride: int | None = None, batch_size: int = 16
) -> DocumentScores:
    """Nats and scored tokens per document (see the module docstring for which tokens count)."""
    stride = stride or block_size
    todo = [w for i, d in enumerate(docs) for w in windows(i, len(d), block_size, stride)]
    todo.sort(key=lambda w: w.end - w.begin, reverse=True)  # similar lengths share a batch: little padding
    nats = np.zeros(len(docs), dtype=np.float64)
    tokens = np.zeros(len(docs), dtype=np.int64)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        width = max(w.end - w.begin for w in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        scored = torch.zeros(len(batch), width - 1, dtype=torch.bool)  # target position j+1 of row
        for row, w in enumerate(batch):
            ids[row, : w.end - w.begin] = torch.as_tensor(docs[w.doc][w.begin : w.end])
            attention[row, : w.end - w.begin] = 1
            scored[row, w.first_scored - w.begin - 1 : w.end - w.begin - 1] = True
        ids, attention, scored = ids.to(device), attention.to(device), scored.to(device)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        ce = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view_as(scored)
        per_window = (ce.double() * scored).sum(1).cpu().numpy()
        counts = scored.sum(1).cpu().numpy()
        for row, w in enumerate(batch):
            nats[w.doc] += per_window[row]
            tokens[w.doc] += counts[row]
    model.train(was_training)
    return DocumentScores(nats, tokens)


def bootstrap_bpt(
    scores: dict[str, DocumentScores], samples: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """BPT of each model on `samples` resamples of the documents (the same resamples for every model)."""
    names = list(scores)
    n = len(scores[names[0]].tokens)
    rng = np.random.default_rng(seed)
    out = {name: np.empty(samples) for name in names}
    chunk = max(1, 2_000_000 // max(n, 1))  # bound the index matrix's memory
    for start in range(0, samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, samples - start), n))
        for name in names:
            s = scores[name]
            tok = s.tokens[idx].sum(1)
            out[name][start : start + len(idx)] = s.nats[idx].sum(1) / np.maximum(tok, 1) / LN2
    return out


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap values."""
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
