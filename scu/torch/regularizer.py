"""ParamBPT of a PEFT LoRA model as a differentiable tensor.

The penalty that enters the loss is lambda * ParamBPT * ln 2 (nats), a tensor with a
gradient: unlike the public reference, lambda really changes the update.

Priors (what counts as "the learned change" theta - theta0):
* ``delta``   each module's dW = s * B @ A minus its initial value; ||dW||^2 from r x r Gram
              products, sum((B^T B) o (A A^T)), without materializing the out x in matrix.
* ``factors`` (A - A0, B - B0).
* ``raw``     (A, B) themselves, as the public reference does. At step 0 this is dominated by
              A's random initialization; use it only for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from scu import ScuError
from scu.core.bits import param_bpt

Prior = Literal["delta", "factors", "raw"]


@dataclass
class LoraPair:
    A: Tensor  # [r, in]
    B: Tensor  # [out, r]
    scale: float
    A0: Tensor | None  # initial factors, kept only where the initial dW is non-zero (or for `factors`)
    B0: Tensor | None


def lora_pairs(model: nn.Module, keep_init: bool) -> list[LoraPair]:
    """The active LoRA factor pairs of a PEFT model, with snapshots of their initial values."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            A, B = module.lora_A[name].weight, module.lora_B[name].weight
            nonzero_init = bool(B.detach().abs().amax() > 0)
            snap = keep_init or nonzero_init
            pairs.append(
                LoraPair(
                    A, B, float(module.scaling[name]),
                    A.detach().clone() if snap else None,
                    B.detach().clone() if snap else None,
                )
            )
    if not pairs:
        raise ScuError("the model has no active LoRA layers; check lora.targets against the model's module names")
    return pairs


@dataclass
class _Group:
    """LoRA pairs of one shape, evaluated together: a handful of batched ops instead of a few per module."""

    pairs: list[LoraPair]
    scale_sq: Tensor  # [G]
    A0: Tensor | None  # [G, r, in], stacked initial factors
    B0: Tensor | None  # [G, out, r]


class LoraPenalty:
    """Computes ParamBPT (bits per training token) of the learned LoRA change."""

    def __init__(self, model: nn.Module, prior: Prior, sigma: float, tokens_per_epoch: int) -> None:
        if tokens_per_epoch <= 0:
            raise ScuError("tokens_per_epoch must be > 0; check data.tokens_per_epoch")
        self.prior, self.sigma, self.tokens_per_epoch = prior, sigma, tokens_per_epoch
        self.pairs = lora_pairs(model, keep_init=(prior == "factors"))
        by_shape: dict[tuple, list[LoraPair]] = {}
        for p in self.pairs:
            by_shape.setdefault((tuple(p.A.shape), tuple(p.B.shape), p.A0 is not None), []).append(p)
        self.groups = []
        for (_, _, has_init), pairs in by_shape.items():
            scale_sq = torch.tensor([p.scale**2 for p in pairs], device=pairs[0].A.device)
            A0 = torch.stack([p.A0.float() for p in pairs]) if has_init else None
            B0 = torch.stack([p.B0.float() for p in pairs]) if has_init else None
            self.groups.append(_Group(pairs, scale_sq, A0, B0))

    def _group_sq_norm(self, g: _Group) -> Tensor:
        A = torch.stack([p.A for p in g.pairs]).float()  # [G, r, in]
        B = torch.stack([p.B for p in g.pairs]).float()  # [G, out, r]
        if self.prior == "raw":
            return A.pow(2).sum() + B.pow(2).sum()
        if self.prior == "factors":
            return (A - g.A0).pow(2).sum() + (B - g.B0).pow(2).sum()
        if g.A0 is not None:  # delta from a non-zero init (PiSSA/OLoRA): B A - B0 A0 = [B, -B0] @ [A; A0]
            A, B = torch.cat([A, g.A0], 1), torch.cat([B, -g.B0], 2)
        gram = (B.transpose(1, 2) @ B) * (A @ A.transpose(1, 2))  # [G, r, r]: ||B A||^2 = sum of entries
        return (g.scale_sq * gram.sum((1, 2))).sum()

    def sq_norm(self) -> Tensor:
        """||theta - theta0||^2 under the prior, as one differentiable scalar."""
        return torch.stack([self._group_sq_norm(g) for g in self.groups]).sum()

    def __call__(self) -> Tensor:
        return param_bpt(self.sq_norm(), self.sigma, self.tokens_per_epoch)
