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


def _gram_dot(B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor) -> Tensor:
    """<B1 A1, B2 A2>_F computed as sum((B1^T B2) o (A1 A2^T)): two r x r products."""
    return ((B1.t() @ B2) * (A1 @ A2.t())).sum()


class LoraPenalty:
    """Computes ParamBPT (bits per training token) of the learned LoRA change."""

    def __init__(self, model: nn.Module, prior: Prior, sigma: float, tokens_per_epoch: int) -> None:
        if tokens_per_epoch <= 0:
            raise ScuError("tokens_per_epoch must be > 0; check data.tokens_per_epoch")
        self.prior, self.sigma, self.tokens_per_epoch = prior, sigma, tokens_per_epoch
        self.pairs = lora_pairs(model, keep_init=(prior == "factors"))

    def sq_norm(self) -> Tensor:
        """||theta - theta0||^2 under the prior, as one differentiable scalar."""
        terms = []
        for p in self.pairs:
            A, B = p.A.float(), p.B.float()
            if self.prior == "raw":
                terms.append(A.pow(2).sum() + B.pow(2).sum())
            elif self.prior == "factors":
                terms.append((A - p.A0).pow(2).sum() + (B - p.B0).pow(2).sum())
            elif p.B0 is None:  # delta from zero: ||s B A||^2
                terms.append(p.scale**2 * _gram_dot(B, A, B, A))
            else:  # delta from a non-zero init (PiSSA/OLoRA): B A - B0 A0 = [B, -B0] @ [A; A0], rank 2r
                Bc, Ac = torch.cat([B, -p.B0.float()], 1), torch.cat([A, p.A0.float()], 0)
                terms.append(p.scale**2 * _gram_dot(Bc, Ac, Bc, Ac))
        return torch.stack(terms).sum()

    def __call__(self) -> Tensor:
        return param_bpt(self.sq_norm(), self.sigma, self.tokens_per_epoch)
