"""`prior_sigma: linesearch`: the prior scale from one line search at LoRA's start, before the first step.

At the start B = 0, so the training data's mean gradient moves B alone. Along it, the training CE has a minimum at
some step t*. The change that step makes, dW* (s * dB * A per module), is how far the data pulls in its steepest
direction. Spread over the adapter's p trainable entries it gives sigma_ls = ||dW*|| / sqrt(p), and the prior scale is
LINESEARCH_SCALE * sigma_ls. The constant is measured, not derived: on the tiny harness base and on SmolLM2-135M,
sigma_ls was 0.122 and 0.128 of the lambda-1 prior scale each picked on validation (bench.prior_linesearch;
docs/method.md, "A prior scale from one line search"). One gradient pass and about ten forward passes over at most
LINESEARCH_BLOCKS training blocks; no fit, no validation data.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from scu import ScuError
from scu.data.text import Blocks
from scu.eval.bpt import block_bpt, cross_entropy_sum, packed_forward

LINESEARCH_SCALE = 8.0
LINESEARCH_BLOCKS = 64
FIRST_STEP = 0.05  # the first probe moves the trainable parameters by this much (L2); then doubling


def line_search_sigma(model: nn.Module, blocks: Blocks, batch_size: int, max_blocks: int = LINESEARCH_BLOCKS
                      ) -> tuple[float, dict[str, Any]]:
    """(the prior scale, a record of the search) for a PEFT model at LoRA's start, from evenly spaced training blocks.
    The model is left as it was. Runs in eval mode (no dropout), so it draws no random numbers."""
    from scu.torch.regularizer import LoraPenalty

    params = [p for p in model.parameters() if p.requires_grad]
    lora_b = [p for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    if not lora_b or any(float(p.detach().abs().max()) != 0.0 for p in lora_b):
        raise ScuError("prior_sigma: linesearch measures the first step from LoRA's zero start (lora.init true or "
                       "gaussian); set scu.prior_sigma to a number")
    change = LoraPenalty(model, "delta", 1.0, 1)  # its sq_norm() is ||dW||^2 over every module
    subset = evenly_spaced(blocks, max_blocks)
    was_training = model.training
    model.eval()
    try:
        grads = mean_gradient(model, params, subset, batch_size)
        g_norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        if not g_norm > 0:
            raise ScuError("prior_sigma: linesearch found no gradient on the training data; set scu.prior_sigma to a number")
        best, curve = search_along(model, params, grads, subset, batch_size, lambda t: math.sqrt(float(change.sq_norm())))
    finally:
        model.train(was_training)
    dof = sum(p.numel() for p in params)
    sigma_ls = best["dw_norm"] / math.sqrt(dof)
    record = {"blocks": len(subset), "grad_norm": g_norm, "t_star": best["t"], "dw_norm": best["dw_norm"],
              "ce_drop_bits": curve[0]["ce_bits"] - best["ce_bits"], "dof": dof, "sigma_ls": sigma_ls,
              "evaluations": len(curve)}
    return LINESEARCH_SCALE * sigma_ls, record


def evenly_spaced(blocks: Blocks, count: int) -> Blocks:
    """At most `count` of the blocks, evenly spaced over all of them (the first and the last included)."""
    take = np.unique(np.linspace(0, len(blocks) - 1, min(count, len(blocks))).round().astype(np.int64))
    return Blocks(blocks.ids[take], blocks.positions[take], blocks.loss_mask[take])


def search_along(model: nn.Module, params: list[torch.Tensor], directions: list[torch.Tensor], blocks: Blocks,
                 batch_size: int, dw_norm: Callable[[float], float]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(the point of least training CE along params - t * directions, every point evaluated); the params are put back.
    From t = 0 and a first move of FIRST_STEP (L2), doubling while CE falls (at most 10^4 times the first), then
    narrowed to within a factor 2^(1/4). `dw_norm(t)` gives the change ||dW|| at the current point."""
    start = [p.detach().clone() for p in params]
    first = FIRST_STEP / math.sqrt(sum(float((d * d).sum()) for d in directions))
    curve: list[dict[str, float]] = []

    def at(t: float) -> dict[str, float]:
        with torch.no_grad():
            for p, p0, d in zip(params, start, directions):
                p.copy_(p0 - t * d)
            change = dw_norm(t)
        curve.append({"t": t, "ce_bits": block_bpt(model, blocks, batch_size), "dw_norm": change})
        return curve[-1]

    try:
        at(0.0)
        t = first
        while at(t)["ce_bits"] < curve[-2]["ce_bits"] and t < 1e4 * first:
            t *= 2
        best = min(curve, key=lambda c: c["ce_bits"])
        for factor in (2 ** -0.5, 2 ** 0.5, 2 ** -0.25, 2 ** 0.25):
            at(best["t"] * factor)
            best = min(curve, key=lambda c: c["ce_bits"])
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
    return best, curve


def mean_gradient(model: nn.Module, params: list[nn.Parameter], blocks: Blocks, batch_size: int) -> list[torch.Tensor]:
    """The gradient of the token-weighted mean CE over `blocks`, each packed document attending to itself only."""
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    tokens = blocks.loss_tokens()
    for i in range(0, len(blocks), batch_size):
        logits, batch = packed_forward(model, blocks, slice(i, i + batch_size), device)
        (cross_entropy_sum(logits, batch["input_ids"], batch["loss_mask"]) / tokens).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
    model.zero_grad(set_to_none=True)
    return grads
