"""The SCU penalty over mlx-lm's LoRA layers: the description length of the learned change.

Same priors as the PyTorch backend (docs/method.md), in mlx-lm's storage orientation:

* ``delta``: ||scale * B A||_F^2 per module, computed without materializing the product as
  sum((B^T B) * (A A^T)) on r x r Gram matrices. mlx-lm's ``LoRALinear`` stores
  lora_a = A^T (in x r) and lora_b = B^T (r x out); ``LoRASwitchLinear`` stores A (E x r x in)
  and B (E x out x r) per expert; ``LoRAEmbedding`` adds scale * lora_a @ lora_b, so there
  lora_a plays B and lora_b plays A. B starts at zero, so the value is exactly 0 at step 0.
* ``factors``: ||A - A0||^2 + ||B||^2, with A0 the initial A (also 0 at step 0).
* ``raw``: ||A||^2 + ||B||^2, the public reference's choice, kept for comparisons only.

The result is an ``mx.array`` that carries a gradient; the loop adds
lam * ParamBPT * ln 2 to the cross-entropy in nats (scu.core.bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

from scu import ScuError
from scu.core.bits import LN2, param_bpt, prior_scale, weight_scale_sigma

Prior = Literal["delta", "factors", "raw"]
LORA_TYPES = (LoRALinear, LoRASwitchLinear, LoRAEmbedding)


@dataclass
class _Site:
    path: str
    module: nn.Module
    a0: mx.array | None  # initial lora_a, for the `factors` prior


def _gram_pair(module: nn.Module) -> tuple[mx.array, mx.array]:
    """(B^T B, A A^T) for one LoRA module, in float32, whatever its storage orientation."""
    a = module.lora_a.astype(mx.float32)
    b = module.lora_b.astype(mx.float32)
    if isinstance(module, LoRALinear):  # a = A^T (in, r), b = B^T (r, out)
        return b @ b.T, a.T @ a
    if isinstance(module, LoRASwitchLinear):  # a = A (E, r, in), b = B (E, out, r)
        return b.swapaxes(-1, -2) @ b, a @ a.swapaxes(-1, -2)
    # LoRAEmbedding: delta = a @ b, a (num_embeddings, r) is the left factor, b (r, dims) the right
    return a.T @ a, b @ b.T


class LoraPenalty:
    """Squared norm of the learned change over every LoRA module of a model, under one prior.

    Built once after the LoRA layers are attached. It keeps references to the modules, so when
    the training step updates the model's parameters (also inside ``mx.compile`` or
    ``nn.value_and_grad``), the penalty reads the current values.
    """

    def __init__(self, model: nn.Module, prior: Prior, sigma: float | str, tokens_per_epoch: int) -> None:
        if prior not in ("delta", "factors", "raw"):
            raise ScuError(f"unknown prior {prior!r}; use delta, factors or raw")
        dora = [p for p, m in model.named_modules() if isinstance(m, (DoRALinear, DoRAEmbedding))]
        if dora:
            raise ScuError(f"the MLX backend has no DoRA penalty ({dora[0]} is DoRA); set lora.use_dora: false")
        self.prior = prior
        self.tokens_per_epoch = tokens_per_epoch
        self.sites = [
            _Site(p, m, mx.array(m.lora_a) if prior == "factors" else None)
            for p, m in model.named_modules()
            if isinstance(m, LORA_TYPES)
        ]
        if not self.sites:
            raise ScuError("the model has no mlx-lm LoRA layers; check lora.targets against the model's module names")
        self.sigma = prior_scale(sigma, self.base_weight_rms)
        if prior == "factors":
            mx.eval([s.a0 for s in self.sites])

    def base_weight_rms(self) -> float:
        """RMS of the frozen weights under the LoRA layers (`prior_sigma: auto`); quantized bases are refused."""
        weights = [s.module.linear.weight if hasattr(s.module, "linear") else s.module.embedding.weight for s in self.sites]
        if any(w.dtype == mx.uint32 for w in weights):
            raise ScuError("prior_sigma: auto needs unquantized base weights; set scu.prior_sigma to a number")
        sq_sum = sum(float(mx.sum(w.astype(mx.float32) ** 2)) for w in weights)
        return weight_scale_sigma(sq_sum, sum(w.size for w in weights))

    def initial_factors(self) -> dict[str, mx.array]:
        """A0 per module path (only for the `factors` prior); saved in checkpoints so a resume keeps it."""
        return {s.path: s.a0 for s in self.sites if s.a0 is not None}

    def load_initial_factors(self, a0: dict[str, mx.array]) -> None:
        for s in self.sites:
            if s.a0 is not None:
                s.a0 = a0[s.path]

    def sq_norm(self) -> mx.array:
        """||theta - theta0||^2 under the prior, as a float32 scalar that carries a gradient."""
        total = mx.array(0.0, dtype=mx.float32)
        for s in self.sites:
            m = s.module
            if self.prior == "delta":
                btb, aat = _gram_pair(m)
                total = total + (m.scale * m.scale) * mx.sum(btb * aat)
                continue
            a = m.lora_a.astype(mx.float32)
            if s.a0 is not None:
                a = a - s.a0.astype(mx.float32)
            total = total + mx.sum(a * a) + mx.sum(mx.square(m.lora_b.astype(mx.float32)))
        return total

    def param_bpt(self) -> mx.array:
        """ParamBPT: description length of the change in bits per training token."""
        return param_bpt(self.sq_norm(), self.sigma, self.tokens_per_epoch)

    def loss_term(self, lam: mx.array) -> tuple[mx.array, mx.array]:
        """(lam * ParamBPT * ln 2, ParamBPT): the nats added to the cross-entropy, and the measured value."""
        bpt = self.param_bpt()
        return lam * bpt * LN2, bpt
