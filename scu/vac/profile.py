"""Calibration statistics, one decoder layer at a time.

`profile_layer` measures only the linear layers of one decoder layer: the activation second
moments X^T X and mean |x| (forward hooks on their inputs) and the diagonal empirical Fisher of
their weights (only those weights require gradients). Memory therefore holds one layer's
statistics at a time, whatever the depth of the model, and the statistics are always those of
the model as it is now, partly compressed or not.

The Fisher is the mean squared gradient per calibration token. Gradients are taken per sequence
(of the summed token loss); with token gradients roughly uncorrelated, E[g_seq^2] = T E[g_tok^2],
so the sum of squared sequence gradients divided by the number of tokens estimates it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from scu import ScuError
from scu.vac.factorize import LinearStats


def is_factorized(module: nn.Module) -> bool:
    """A FactorizedLinear, from scu or from the modeling file a saved model was loaded with (another class object)."""
    return type(module).__name__ == "FactorizedLinear" and hasattr(module, "rank")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder layers of a transformers causal LM."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ScuError(f"{type(model).__name__} has no decoder `layers` list; VAC supports decoder-only transformers")
    return layers


def layer_prefix(model: nn.Module, index: int) -> str:
    target = decoder_layers(model)[index]
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AssertionError("decoder layer not found among the model's modules")


def layer_linears(model: nn.Module, index: int) -> dict[str, nn.Linear]:
    """Full name -> dense nn.Linear for every linear layer inside decoder layer `index`."""
    prefix = layer_prefix(model, index)
    layer = decoder_layers(model)[index]
    factored = {n for n, m in layer.named_modules() if is_factorized(m)}
    return {
        f"{prefix}.{n}": m
        for n, m in layer.named_modules()
        if type(m) is nn.Linear and not any(n.startswith(f + ".") for f in factored)
    }


def profile_layer(
    model: nn.Module,
    index: int,
    batches: torch.Tensor,
    activations: bool = True,
    fisher: bool = True,
    progress: Callable[[], None] | None = None,
) -> dict[str, LinearStats]:
    """Statistics of the dense linear layers of decoder layer `index` over calibration `batches` [n, T]."""
    linears = layer_linears(model, index)
    stats = {name: LinearStats() for name in linears}
    hooks = []
    if activations:
        for name, lin in linears.items():
            hooks.append(lin.register_forward_pre_hook(_accumulate_inputs(stats[name])))
    was_training = model.training
    model.eval()
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        if fisher:
            weights = [lin.weight for lin in linears.values()]
            for w in weights:
                w.requires_grad_(True)
            for name, lin in linears.items():
                stats[name].fisher = torch.zeros(lin.weight.shape, dtype=torch.float64, device=lin.weight.device)
            tokens = 0
            for seq in batches:
                ids = seq[None].to(weights[0].device)
                logits = model(input_ids=ids).logits[0, :-1].float()
                loss = nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
                grads = torch.autograd.grad(loss, weights)
                for name, g in zip(linears, grads):
                    stats[name].fisher += g.double() ** 2
                tokens += ids.shape[1] - 1
                if progress:
                    progress()
            for s in stats.values():
                s.fisher /= max(tokens, 1)
        elif activations:
            with torch.no_grad():
                for seq in batches:
                    model(input_ids=seq[None].to(next(model.parameters()).device))
                    if progress:
                        progress()
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return stats


def _accumulate_inputs(stats: LinearStats):
    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        if stats.xtx is None:
            stats.xtx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            stats.abs_sum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        stats.xtx += x.T @ x
        stats.abs_sum += x.abs().sum(0)
        stats.tokens += x.shape[0]

    return hook
