"""Calibration statistics of the decoder's linear layers, for about one pass through the model.

Activations. `embed` runs the calibration batches through the embeddings and stops at the first
decoder layer. `LayerInputs` keeps the hidden states entering decoder layers and runs one layer at a
time on them, so the inputs of layer i are what layers 0..i-1 *as they are now* (compressed or not)
produce, without running the whole model again for every layer. `layer_statistics` accumulates
X^T X and sum |x| of one layer's linear inputs (forward hooks) while that layer runs on its cached
inputs. Memory holds one layer's statistics and a few layers' hidden states.

Fisher. `fisher_statistics` is one forward and backward pass per calibration sequence through the
model with every dense decoder weight requiring gradients. The diagonal empirical Fisher is the
squared gradient of each sequence's summed token loss, summed and divided by the number of tokens
(with token gradients roughly uncorrelated, E[g_seq^2] = T E[g_tok^2], so this estimates the mean
squared per-token gradient). Only its row and column sums are kept: they are all the methods use.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from scu import ScuError
from scu.vac.factorize import LinearStats

CACHE_BATCH = 8  # calibration sequences per cached hidden-state tensor


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


def all_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The dense linear layers of every decoder layer."""
    out = {}
    for i in range(len(decoder_layers(model))):
        out.update(layer_linears(model, i))
    return out


class _Captured(Exception):
    """Raised by the hook on the first decoder layer: nothing after the embeddings needs to run."""


def embed(model: nn.Module, batches: torch.Tensor, batch_size: int = CACHE_BATCH) -> tuple[list[torch.Tensor], list[dict]]:
    """Hidden states entering the first decoder layer, and the keyword arguments the model passes its layers, per batch.

    Every layer is later called with these same arguments (masks, rotary embeddings), so models whose
    layers get different ones (sliding-window layers next to full-attention ones) are refused.
    """
    kinds = getattr(model.config, "layer_types", None)
    if kinds and len(set(kinds)) > 1:
        raise ScuError(f"{type(model).__name__} mixes decoder layer types ({', '.join(sorted(set(kinds)))}); "
                       "VAC's layer-by-layer profiling needs layers that share one attention mask")
    device = next(model.parameters()).device
    seen: dict = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    hidden, kwargs = [], []
    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for chunk in batches.split(batch_size):
                try:
                    model(input_ids=chunk.to(device), use_cache=False)
                except _Captured:
                    pass
                hidden.append(seen.pop("hidden").detach())
                kwargs.append(seen.pop("kwargs"))
    finally:
        handle.remove()
    return hidden, kwargs


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class LayerInputs:
    """The hidden states entering decoder layers over the calibration batches, cached per layer.

    Entry j holds layer j's inputs. It is computed from the nearest cached entry below by running the
    layers in between as they are now, and it stays valid until one of those layers changes
    (`invalidate_above`). `keep` drops entries that no pending layer will start from.
    """

    def __init__(self, layers: nn.ModuleList, first: list[torch.Tensor], kwargs: list[dict]):
        self.layers, self.kwargs = layers, kwargs
        self._entries: dict[int, list[torch.Tensor]] = {0: first}

    @torch.no_grad()
    def get(self, index: int) -> list[torch.Tensor]:
        start = max(j for j in self._entries if j <= index)
        hidden = self._entries[start]
        for j in range(start, index):
            hidden = [run_layer(self.layers[j], h, kw) for h, kw in zip(hidden, self.kwargs)]
            self._entries[j + 1] = hidden
        return hidden

    def put(self, index: int, hidden: list[torch.Tensor]) -> None:
        self._entries[index] = hidden

    def invalidate_above(self, index: int) -> None:
        """Layer `index` changed: the inputs of every later layer are stale."""
        self._entries = {j: h for j, h in self._entries.items() if j <= index}

    def keep(self, pending: Iterable[int]) -> None:
        """Keep only the nearest cached entry at or below each pending layer (and entry 0)."""
        starts = {0} | {max(j for j in self._entries if j <= p) for p in pending}
        self._entries = {j: h for j, h in self._entries.items() if j in starts}


@torch.no_grad()
def layer_statistics(
    layer: nn.Module, linears: dict[str, nn.Linear], inputs: list[torch.Tensor], kwargs: list[dict],
    dense_inputs: list[torch.Tensor] | None = None,
) -> tuple[dict[str, LinearStats], list[torch.Tensor]]:
    """(statistics of `linears`, the layer's outputs) from running `layer` on its cached `inputs`.

    With `dense_inputs` (the dense model's inputs of this layer, same tokens), each linear also gets the
    cross moment of its dense input against its input here, and the outputs returned are those on
    `dense_inputs`: the dense model's inputs of the next layer.
    """
    stats = {name: LinearStats() for name in linears}
    dense_x: dict[str, torch.Tensor] = {}
    phase = {"dense": False}

    def hook(name: str):
        def accumulate(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            if phase["dense"]:
                dense_x[name] = x
            else:
                stats[name].add(x, dense_x.pop(name, None))

        return accumulate

    handles = [lin.register_forward_pre_hook(hook(name)) for name, lin in linears.items()]
    outputs = []
    try:
        for b, (h, kw) in enumerate(zip(inputs, kwargs)):
            if dense_inputs is not None:
                phase["dense"] = True
                outputs.append(run_layer(layer, dense_inputs[b], kw))
                phase["dense"] = False
            out = run_layer(layer, h, kw)
            if dense_inputs is None:
                outputs.append(out)
    finally:
        for h in handles:
            h.remove()
    return stats, outputs


def fisher_statistics(model: nn.Module, batches: torch.Tensor, progress: bool = False) -> dict[str, LinearStats]:
    """Row and column sums of the diagonal empirical Fisher of every dense decoder linear weight (module docstring)."""
    linears = all_linears(model)
    weights = [lin.weight for lin in linears.values()]
    stats = {name: LinearStats() for name in linears}
    rows = [torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) for w in weights]
    cols = [torch.zeros(w.shape[1], dtype=torch.float64, device=w.device) for w in weights]
    was_training = model.training
    model.eval()
    flags = {p: p.requires_grad for p in model.parameters()}
    tokens = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        for seq in tqdm(batches, desc="Fisher (one pass)", unit="seq", leave=False, disable=not progress):
            ids = seq[None].to(weights[0].device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            loss = nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            for r, c, g in zip(rows, cols, torch.autograd.grad(loss, weights)):
                g2 = g.double() ** 2
                r += g2.sum(1)
                c += g2.sum(0)
            tokens += ids.shape[1] - 1
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    for s, r, c in zip(stats.values(), rows, cols):
        s.fisher_rows, s.fisher_cols = r / max(tokens, 1), c / max(tokens, 1)
    return stats
