"""Compress every linear layer of the decoder to a target parameter ratio.

1. Ranks. Baseline methods (svd, fwsvd, asvd, whiten) give every matrix the same parameter
   fraction. `vac` profiles the dense model layer by layer, predicts the loss increase of every
   candidate rank of every matrix (scu.vac.factorize.truncation_costs) and lets the knapsack
   (scu.vac.allocate) pick the ranks that minimize it within the budget. Those ranks are the ones used.
2. Factorization, sequentially in the chosen order (front: first layer first; back; middle-out:
   from the middle layer outwards, alternating). Each layer's statistics are measured on the model
   as it is at that moment, with the layers before it in the order already compressed.

The ratio is dense / compressed parameter count over the linear layers of the decoder; it must
land within 1% of the target, and the whole-model ratio is reported next to it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from scu import ScuError
from scu.vac.allocate import Matrix, candidate_ranks, check_ratio, knapsack_ranks, linear_ratio, uniform_ranks
from scu.vac.choices import METHODS, ORDERS
from scu.vac.factorize import decompose, truncation_costs
from scu.vac.modeling_vac import FactorizedLinear
from scu.vac.profile import decoder_layers, layer_linears, profile_layer

NEEDS_ACTIVATIONS = {"asvd", "whiten", "vac"}
NEEDS_FISHER = {"fwsvd", "vac"}


@dataclass
class CompressSpec:
    """Everything that determines a compression, besides the model and the calibration data."""

    method: str = "vac"
    ratio: float = 1.8
    order: str = "front"
    fisher_exponent: float = 1 / 3
    attn_floor: float = 0.0  # minimum kept rank, as a fraction of full rank, for attention matrices
    mlp_floor: float = 0.0
    component_weights: dict[str, float] = field(default_factory=dict)  # log2 cost multiplier per projection kind

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ScuError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.order not in ORDERS:
            raise ScuError(f"unknown order {self.order!r}; choose one of {', '.join(ORDERS)}")
        if not (math.isfinite(self.ratio) and self.ratio > 1):
            raise ScuError(f"--ratio must be a finite number above 1 (dense / compressed parameters), got {self.ratio}")
        if not (0 <= self.attn_floor < 1 and 0 <= self.mlp_floor < 1):
            raise ScuError("rank floors are fractions of full rank in [0, 1)")


@dataclass
class CompressResult:
    ranks: dict[str, int | None]
    linear_ratio: float
    model_ratio: float
    linear_params_dense: int
    linear_params: int
    predicted_cost: float | None

    def to_json(self) -> dict:
        return asdict(self)


def layer_order(n_layers: int, order: str) -> list[int]:
    """Indices of decoder layers in compression order."""
    if order == "front":
        return list(range(n_layers))
    if order == "back":
        return list(range(n_layers - 1, -1, -1))
    mid = (n_layers - 1) / 2
    return sorted(range(n_layers), key=lambda i: (abs(i - mid), i))


def is_attention(name: str) -> bool:
    parent = name.rsplit(".", 1)[0].lower()
    return "attn" in parent or "attention" in parent


def component(name: str) -> str:
    """Projection kind of a linear layer (q_proj, gate_proj, ...), shared by all decoder layers."""
    return name.rsplit(".", 1)[-1]


def unique_param_count(model: nn.Module) -> int:
    """Parameters and int8 weight buffers, counting tied tensors once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *(b for b in model.buffers() if b.dtype == torch.int8)]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return total


def all_linears(model: nn.Module) -> dict[str, nn.Linear]:
    out = {}
    for i in range(len(decoder_layers(model))):
        out.update(layer_linears(model, i))
    return out


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def plan_ranks(model: nn.Module, batches: torch.Tensor, spec: CompressSpec, verbose: bool = False) -> tuple[dict, float | None]:
    """Ranks for every decoder linear layer (and the total predicted cost for `vac`)."""
    linears = all_linears(model)
    if not linears:
        raise ScuError("the model has no dense linear layers left to compress")
    matrices = [Matrix(n, m.out_features, m.in_features) for n, m in linears.items()]
    budget = math.floor(sum(m.dense_params for m in matrices) / spec.ratio)
    if spec.method != "vac":
        return uniform_ranks(matrices, budget), None
    candidates, costs = [], []
    for i in range(len(decoder_layers(model))):
        _log(f"vac: profiling layer {i} for allocation", verbose)
        stats = profile_layer(model, i, batches)
        for name, lin in layer_linears(model, i).items():
            m = Matrix(name, lin.out_features, lin.in_features)
            floor = spec.attn_floor if is_attention(name) else spec.mlp_floor
            ranks = candidate_ranks(m, floor)
            weight = 2.0 ** spec.component_weights.get(component(name), 0.0)
            decomp = decompose(lin.weight, "vac", stats[name], spec.fisher_exponent)
            candidates.append(ranks)
            costs.append([weight * c for c in truncation_costs(decomp, stats[name], ranks)])
        del stats
    ranks = knapsack_ranks(matrices, candidates, costs, budget)
    chosen = sum(c[cand.index(ranks[m.name])] for m, cand, c in zip(matrices, candidates, costs) if ranks[m.name] is not None)
    return ranks, chosen


def factorize_layer(model: nn.Module, index: int, ranks: dict, batches: torch.Tensor, spec: CompressSpec) -> None:
    """Replace the dense linear layers of decoder layer `index` by their factorizations at `ranks`."""
    linears = {n: m for n, m in layer_linears(model, index).items() if ranks.get(n) is not None}
    if not linears:
        return
    stats = {}
    if spec.method in NEEDS_ACTIVATIONS | NEEDS_FISHER:
        stats = profile_layer(
            model, index, batches, activations=spec.method in NEEDS_ACTIVATIONS, fisher=spec.method in NEEDS_FISHER
        )
    for name, lin in linears.items():
        decomp = decompose(lin.weight, spec.method, stats.get(name), spec.fisher_exponent)
        up, down = decomp.factors(ranks[name], lin.weight.dtype)
        f = FactorizedLinear(lin.in_features, lin.out_features, ranks[name], bias=lin.bias is not None,
                             device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            f.up.weight.copy_(up)
            f.down.weight.copy_(down)
            if lin.bias is not None:
                f.up.bias.copy_(lin.bias)
        model.set_submodule(name, f)


def compress(model: nn.Module, batches: torch.Tensor, spec: CompressSpec, verbose: bool = False) -> CompressResult:
    """Compress `model` in place to `spec.ratio` on its decoder linear layers; see the module docstring."""
    spec.validate()
    dense_total = unique_param_count(model)
    matrices = [Matrix(n, m.out_features, m.in_features) for n, m in all_linears(model).items()]
    ranks, predicted = plan_ranks(model, batches, spec, verbose)
    achieved = linear_ratio(matrices, ranks)
    check_ratio(achieved, spec.ratio)
    for i in layer_order(len(decoder_layers(model)), spec.order):
        _log(f"{spec.method}: factorizing layer {i}", verbose)
        factorize_layer(model, i, ranks, batches, spec)
    return CompressResult(
        ranks=ranks,
        linear_ratio=achieved,
        model_ratio=dense_total / unique_param_count(model),
        linear_params_dense=sum(m.dense_params for m in matrices),
        linear_params=sum(m.params(ranks[m.name]) for m in matrices),
        predicted_cost=predicted,
    )
