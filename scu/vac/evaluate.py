"""Perplexity by the standard protocol, and CPU/GPU throughput against a dense baseline.

Perplexity: the documents are joined with blank lines into one text, tokenized once, and cut into
non-overlapping windows of `seq_len` tokens; each window predicts its tokens 2..n from the ones
before, and the NLL is summed over every predicted token of every window (token-weighted), so the
result does not depend on the batch size. The last, shorter window is included.

Speed: prefill is one forward pass over a batch of one `prefill_len`-token prompt (tokens/s);
decode is greedy generation at batch 1 with the KV cache (new tokens/s). Arms are measured
interleaved (A, B, A, B, ...) and the ratio is the median of the per-round ratios, which cancels
most of the drift a shared machine adds.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from scu.vac.compress import unique_param_count
from scu.vac.profile import decoder_layers

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
# Tokens per forward pass when the caller gives no batch size. The float32 logits and their log-softmax are several
# [windows, seq_len, vocab] copies: SmolLM2 (49k vocabulary) peaked at 10.3 GB with 8 windows of 2,048 tokens a pass
# and at 2.2 GB with one (`python -m bench.vac_eval_memory`).
EVAL_TOKENS_PER_PASS = 2048


def token_stream(docs: list[str], tokenizer) -> torch.Tensor:
    """All documents as one token sequence (joined by blank lines, as the text file has them)."""
    return torch.tensor(tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"], dtype=torch.long)


@torch.no_grad()
def window_nll(model: nn.Module, ids: torch.Tensor, seq_len: int, batch_size: int | None = None) -> tuple[float, int]:
    """(summed NLL in nats, number of predicted tokens) over non-overlapping windows of `ids`.

    `batch_size` windows go through the model at once; by default as many as fit in EVAL_TOKENS_PER_PASS tokens.
    """
    device = next(model.parameters()).device
    if batch_size is None:
        batch_size = max(1, EVAL_TOKENS_PER_PASS // seq_len)
    full = len(ids) // seq_len
    windows = [ids[i * seq_len : (i + 1) * seq_len] for i in range(full)]
    if len(ids) - full * seq_len >= 2:
        windows.append(ids[full * seq_len :])
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        for length in sorted({len(w) for w in group}):  # the short tail window goes alone
            batch = torch.stack([w for w in group if len(w) == length]).to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += nll.item()
            count += batch[:, 1:].numel()
    return total, count


def perplexity(model: nn.Module, ids: torch.Tensor, seq_len: int, batch_size: int | None = None) -> dict[str, float]:
    nll, tokens = window_nll(model, ids, seq_len, batch_size)
    mean = nll / max(tokens, 1)
    return {"ppl": math.exp(mean), "bpt": mean / math.log(2), "nll": mean, "tokens": tokens}


def disk_bytes(path: str | Path) -> int:
    """Bytes of the weight files in a saved model directory."""
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))


def linear_flops_params(model: nn.Module) -> int:
    """Multiply-accumulates per token spent in linear layers: every dense, factor and int8 layer, and the head."""
    return sum(m.in_features * m.out_features for m in model.modules() if type(m).__name__ in ("Linear", "Int8Linear"))


def predicted_prefill_flop_ratio(dense: nn.Module, compressed: nn.Module, seq_len: int) -> float:
    """Dense over compressed FLOPs of a prefill of `seq_len` tokens: linear layers, head, and attention scores."""
    cfg = dense.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    # QK^T and AV: 2 * (average context seq_len / 2) * heads * head_dim MACs per token and layer
    attention = len(decoder_layers(dense)) * seq_len * cfg.num_attention_heads * head_dim
    return (linear_flops_params(dense) + attention) / (linear_flops_params(compressed) + attention)


@torch.no_grad()
def _prefill_seconds(model: nn.Module, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return time.perf_counter() - start


@torch.no_grad()
def _decode_seconds(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, pad_token_id=0,
    )
    return time.perf_counter() - start


def measure_speed(
    arms: dict[str, nn.Module], vocab: int, prefill_len: int = 512, decode_tokens: int = 64, rounds: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Median prefill and decode tokens/s per arm, measured interleaved, after one warm-up round."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, prefill_len), generator=gen)
    prompt = ids[:, :16]
    times: dict[str, dict[str, list[float]]] = {a: {"prefill": [], "decode": []} for a in arms}
    for r in range(rounds + 1):
        for name, model in arms.items():
            p = _prefill_seconds(model, ids)
            d = _decode_seconds(model, prompt, decode_tokens)
            if r > 0:
                times[name]["prefill"].append(prefill_len / p)
                times[name]["decode"].append(decode_tokens / d)
    return {a: {k: statistics.median(v) for k, v in t.items()} | {f"{k}_rounds": v for k, v in t.items()} for a, t in times.items()}


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i] (arms measured side by side in each round)."""
    return statistics.median(x / y for x, y in zip(a, b))


def model_summary(model: nn.Module, path: str | Path | None) -> dict[str, int]:
    return {"params": unique_param_count(model), "disk_bytes": disk_bytes(path) if path else 0}
