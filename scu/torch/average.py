"""The weights auto-stop saves: an EMA of the trainable weights over about the detector's window (EquilibriumConfig.average_weight)."""

from __future__ import annotations

import torch


def update_average(model: torch.nn.Module, average: dict[str, torch.Tensor] | None, weight: float) -> dict[str, torch.Tensor]:
    """One EMA step of `model`'s trainable weights; the first call copies them."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        if average is None:
            return {n: p.clone() for n, p in params.items()}
        for n, p in params.items():
            average[n].lerp_(p, weight)
    return average


def load_average(model: torch.nn.Module, average: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in average:
                p.copy_(average[n])
