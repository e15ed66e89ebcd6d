"""Token-weighted held-out bits per token: total nats over total predicted tokens, / ln 2."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scu.core.bits import LN2


def cross_entropy_sum(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Summed next-token cross-entropy (nats) of a batch of packed blocks, in float32."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="sum")


@torch.no_grad()
def block_bpt(model: nn.Module, blocks: np.ndarray, batch_size: int = 16) -> float:
    """Bits per token over packed blocks (each block predicts its tokens 2..T)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(blocks), batch_size):
        ids = torch.from_numpy(blocks[i : i + batch_size]).to(device)
        nats += cross_entropy_sum(model(input_ids=ids).logits, ids).double()
    model.train(was_training)
    tokens = blocks.shape[0] * (blocks.shape[1] - 1)
    return float(nats) / tokens / LN2
