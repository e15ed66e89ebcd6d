"""Token-weighted held-out bits per token: total nats over total predicted tokens, / ln 2."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scu.core.bits import LN2
from scu.data.text import Blocks


def cross_entropy_sum(logits: Tensor, input_ids: Tensor, loss_mask: Tensor | None = None) -> Tensor:
    """Summed next-token cross-entropy (nats) of a batch of packed blocks, in float32; with `loss_mask`
    ([batch, T] bool, scu.data.text.Blocks), only over the tokens it marks as targets."""
    targets = input_ids[:, 1:]
    if loss_mask is not None:
        targets = targets.masked_fill(~loss_mask[:, 1:], -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


def packed_forward(model: nn.Module, blocks: Blocks, idx: np.ndarray | slice, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    """(logits, inputs) of blocks `idx`, each packed document attending to itself only: given position ids and no
    cache, transformers builds the block-diagonal causal mask from the positions (docs/data.md)."""
    batch = {k: torch.from_numpy(v).to(device) for k, v in blocks.batch(idx).items()}
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits, batch


@torch.no_grad()
def block_bpt(model: nn.Module, blocks: np.ndarray | Blocks, batch_size: int = 16) -> float:
    """Bits per token over packed blocks. Token ids alone: each block predicts its tokens 2..T. `Blocks`: each
    document is attended to on its own (position ids, no cache, so the model masks across documents) and only
    the loss targets count, as in training."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(blocks), batch_size):
        if isinstance(blocks, Blocks):
            logits, batch = packed_forward(model, blocks, slice(i, i + batch_size), device)
            nats += cross_entropy_sum(logits, batch["input_ids"], batch["loss_mask"]).double()
        else:
            ids = torch.from_numpy(blocks[i : i + batch_size]).to(device)
            nats += cross_entropy_sum(model(input_ids=ids).logits, ids).double()
    model.train(was_training)
    tokens = blocks.loss_tokens() if isinstance(blocks, Blocks) else blocks.shape[0] * (blocks.shape[1] - 1)
    return float(nats) / tokens / LN2
