"""`prior_sigma: linesearch`: the prior scale from one line search at LoRA's start, before the first step.

At the start B = 0, so the training data's mean gradient moves B alone. Along it, the training CE has a minimum at
some step t*. The change that step makes, dW* (s * dB * A per module), is how far the data pulls in its steepest
direction. Spread over the adapter's p trainable entries it gives sigma_ls = ||dW*|| / sqrt(p), and the prior scale is
LINESEARCH_SCALE * sigma_ls.

The step LoRA can take depends on its random A (dW* = -t* s^2 G A^T A): with the run's own A, sigma_ls moved 2.4x
between seeds on the tiny base. So the search is repeated over LINESEARCH_DRAWS draws of A from LoRA's init
distribution and a fixed generator, each on an interleaved share of the blocks, and sigma_ls is their geometric mean:
the scale no longer depends on the run's seed. In all, LINESEARCH_DRAWS gradient passes and about 12 forward passes
each, over LINESEARCH_BLOCKS training blocks split between them; no fit, no validation data.

The constant is measured, not derived: sigma_ls over the lambda-1 prior scale each harness picked on validation is
0.100 on the tiny harness base and 0.141 on SmolLM2-135M with the draws (0.122-0.135 and 0.128 with seed 0's own A,
where 8 was read off; bench.prior_linesearch; docs/method.md, "A prior scale from one line search").
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
LINESEARCH_DRAWS = 4
DRAW_SEED = 0  # the draws of A are the same in every run, whatever its seed
FIRST_STEP = 0.05  # the first probe moves the trainable parameters by this much (L2); then doubling


def line_search_sigma(model: nn.Module, blocks: Blocks, batch_size: int, max_blocks: int = LINESEARCH_BLOCKS,
                      draws: int = LINESEARCH_DRAWS) -> tuple[float, dict[str, Any]]:
    """(the prior scale, a record of the search) for a PEFT model at LoRA's start, from evenly spaced training blocks.
    `draws` > 0: the geometric mean over that many fixed draws of A from LoRA's init distribution, draw k searching
    blocks k, k + draws, ...; 0: one search with the run's own A over all of them. The model
    is left as it was. Runs in eval mode (no dropout) and draws from its own generator: the run's random stream is
    untouched."""
    from scu.torch.regularizer import LoraPenalty

    params = [p for p in model.parameters() if p.requires_grad]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lora_a = [p for n, p in named if "lora_A" in n]
    lora_b = [p for n, p in named if "lora_B" in n]
    init = lora_init(model)
    if init not in (True, "gaussian") or not lora_b or any(float(p.detach().abs().max()) != 0.0 for p in lora_b):
        raise ScuError("prior_sigma: linesearch measures the first step from LoRA's zero start (lora.init true or "
                       "gaussian); set scu.prior_sigma to a number")
    subset = evenly_spaced(blocks, max_blocks)
    shares = [subset] if draws == 0 else [subset.select(slice(k, None, draws)) for k in range(min(draws, len(subset)))]
    own_a = [a.detach().clone() for a in lora_a]
    generator = torch.Generator().manual_seed(DRAW_SEED)
    searches = []
    was_training = model.training
    model.eval()
    try:
        for share in shares:
            if draws:
                with torch.no_grad():
                    for a in lora_a:
                        a.copy_(draw_a(a.shape, init, generator))
            searches.append(search_first_step(model, params, share, batch_size, LoraPenalty(model, "delta", 1.0, 1)))
    finally:
        with torch.no_grad():
            for a, a0 in zip(lora_a, own_a):
                a.copy_(a0)
        model.train(was_training)
    dof = sum(p.numel() for p in params)
    dw_norm = math.exp(sum(math.log(s["dw_norm"]) for s in searches) / len(searches))
    record = {"blocks": len(subset), "draws": len(searches) if draws else 0, "dw_norm": dw_norm, "dof": dof, "sigma_ls": dw_norm / math.sqrt(dof),
              "evaluations": sum(s["evaluations"] for s in searches), "searches": searches}
    return LINESEARCH_SCALE * record["sigma_ls"], record


def lora_init(model: nn.Module) -> Any:
    """The PEFT model's `init_lora_weights` (True: Kaiming-uniform A, "gaussian": N(0, 1/r^2) A; B = 0 in both)."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    return getattr(config, "init_lora_weights", None)


def draw_a(shape: torch.Size, init: Any, generator: torch.Generator) -> torch.Tensor:
    """One A [r, in] from PEFT's init distribution: U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform, a = sqrt(5)) or
    N(0, 1/r^2) ("gaussian"), drawn from `generator`."""
    r, fan_in = shape
    if init == "gaussian":
        return torch.randn(shape, generator=generator) / r
    return (torch.rand(shape, generator=generator) * 2 - 1) / math.sqrt(fan_in)


def search_first_step(model: nn.Module, params: list[nn.Parameter], blocks: Blocks, batch_size: int,
                      change: Any) -> dict[str, float]:
    """One search along the first step of the adapter as it stands; `change.sq_norm()` is ||dW||^2 from B = 0."""
    grads = mean_gradient(model, params, blocks, batch_size)
    g_norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    if not g_norm > 0:
        raise ScuError("prior_sigma: linesearch found no gradient on the training data; set scu.prior_sigma to a number")
    best, curve = search_along(model, params, grads, blocks, batch_size, lambda t: math.sqrt(float(change.sq_norm())))
    return {"blocks": len(blocks), "grad_norm": g_norm, "t_star": best["t"], "dw_norm": best["dw_norm"],
            "ce_drop_bits": curve[0]["ce_bits"] - best["ce_bits"], "evaluations": len(curve)}


def evenly_spaced(blocks: Blocks, count: int) -> Blocks:
    """At most `count` of the blocks, evenly spaced over all of them (the first and the last included)."""
    take = np.unique(np.linspace(0, len(blocks) - 1, min(count, len(blocks))).round().astype(np.int64))
    return blocks.select(take)


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
