"""Compress every linear layer of the decoder to a target parameter ratio.

1. Ranks. Baseline methods (svd, fwsvd, asvd, whiten) give every matrix the same parameter
   fraction. `vac` profiles the dense model layer by layer, predicts the loss increase of every
   candidate rank of every matrix (scu.vac.factorize.truncation_costs) and lets the knapsack
   (scu.vac.allocate) pick the ranks that minimize it within the budget. Those ranks are the ones used.
2. Factorization, sequentially in the chosen order (front: first layer first; back; middle-out:
   from the middle layer outwards, alternating). Each layer's activation statistics are measured on
   the model as it is at that moment, with the layers before it in the order already compressed.
   With `refit` (off by default: it helped on the WikiText base and hurt on SmolLM2, docs/vac.md),
   `whiten` then refits each up factor in closed form toward the dense model's outputs
   (scu.vac.factorize.refit_up), which also absorbs the error the earlier layers left in its inputs.

Cost (scu.vac.profile). Activations come from cached layer inputs: the calibration batches go
through the embeddings once, and each layer runs on the inputs its (possibly compressed)
predecessors produced, so the activation statistics of all layers cost about one forward pass
through the model (two for `vac`, whose allocation needs the dense model's too), not one per layer.

The Fisher (fwsvd, vac) is measured once, on the dense model, in one forward and backward pass, and
serves the allocation and every layer's factorization. This is an approximation: before, each layer's
factorization re-measured it on the partly compressed model, a full backward pass per layer. Only
the relative weights of rows (vac) and of rows and columns (fwsvd) enter the factorization; the
effect on the result is measured in tests/vac/test_profile.py and docs/vac.md.

The ratio is dense / compressed parameter count over the linear layers of the decoder; it must
land within 1% of the target, and the whole-model ratio is reported next to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from scu import ScuError
from scu.vac.allocate import Matrix, candidate_ranks, check_ratio, knapsack_ranks, linear_ratio, uniform_ranks
from scu.vac.choices import METHODS, ORDERS
from scu.vac.factorize import LinearStats, decompose, refit_up, truncation_costs
from scu.vac.modeling_vac import FactorizedLinear
from scu.vac.profile import (
    LayerInputs, all_linears, decoder_layers, embed, fisher_statistics, layer_linears, layer_statistics,
)

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
    refit: bool = False  # whiten: least-squares update of the up factor toward the dense model's outputs (refit_up)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ScuError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.order not in ORDERS:
            raise ScuError(f"unknown order {self.order!r}; choose one of {', '.join(ORDERS)}")
        if not (math.isfinite(self.ratio) and self.ratio > 1):
            raise ScuError(f"--ratio must be a finite number above 1 (dense / compressed parameters), got {self.ratio}")
        if not (0 <= self.attn_floor < 1 and 0 <= self.mlp_floor < 1):
            raise ScuError("rank floors are fractions of full rank in [0, 1)")

    @property
    def refits(self) -> bool:
        """Whether the up factors are refit toward the dense model's outputs (whiten only)."""
        return self.method == "whiten" and self.refit


@dataclass
class CompressResult:
    ranks: dict[str, int | None]
    linear_ratio: float
    model_ratio: float
    linear_params_dense: int
    linear_params: int
    predicted_cost: float | None
    seconds: dict = field(default_factory=dict)  # wall time: fisher, plan, factorize and per_layer (by layer index)

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


def _with_fisher(stats: dict[str, LinearStats], fisher: dict[str, LinearStats]) -> dict[str, LinearStats]:
    for name, s in stats.items():
        if name in fisher:
            s.fisher_rows, s.fisher_cols = fisher[name].fisher_rows, fisher[name].fisher_cols
    return stats


@dataclass
class DenseStatistics:
    """The dense model's statistics that `vac`'s allocation reads: Fisher and every layer's activations.

    They do not depend on how a candidate compresses, so a search measures them once and shares them
    (about 1 GB in float64 for SmolLM2-135M; plain `compress` streams them layer by layer instead).
    """

    fisher: dict[str, LinearStats]
    layers: list[dict[str, LinearStats]]  # per decoder layer, with the Fisher merged in


def dense_layer_statistics(
    model: nn.Module, batches: torch.Tensor, fisher: dict[str, LinearStats], verbose: bool = False,
) -> Iterator[dict[str, LinearStats]]:
    """Each decoder layer's dense activation statistics (Fisher merged in), one pass over cached layer inputs."""
    layers = decoder_layers(model)
    inputs = LayerInputs(layers, *embed(model, batches))
    for i in tqdm(range(len(layers)), desc="vac: allocation statistics", unit="layer", leave=False, disable=not verbose):
        stats, outputs = layer_statistics(layers[i], layer_linears(model, i), inputs.get(i), inputs.kwargs)
        inputs.put(i + 1, outputs)
        inputs.keep([i + 1])
        yield _with_fisher(stats, fisher)


def dense_statistics(model: nn.Module, batches: torch.Tensor, verbose: bool = False) -> DenseStatistics:
    """All of `vac`'s dense statistics, held in memory for sharing across compressions of the same model."""
    fisher = fisher_statistics(model, batches, verbose)
    return DenseStatistics(fisher, list(dense_layer_statistics(model, batches, fisher, verbose)))


def plan_ranks(
    model: nn.Module, batches: torch.Tensor, spec: CompressSpec, fisher: dict[str, LinearStats] | None = None,
    verbose: bool = False, layer_stats: Iterable[dict[str, LinearStats]] | None = None,
) -> tuple[dict, float | None]:
    """Ranks for every decoder linear layer (and the total predicted cost for `vac`).

    `vac` needs the dense model's statistics of every layer: the Fisher (`fisher`, measured here if not
    given) and one pass of each layer over its cached inputs for the activations (`layer_stats`, when
    already measured).
    """
    linears = all_linears(model)
    if not linears:
        raise ScuError("the model has no dense linear layers left to compress")
    matrices = [Matrix(n, m.out_features, m.in_features) for n, m in linears.items()]
    budget = math.floor(sum(m.dense_params for m in matrices) / spec.ratio)
    if spec.method != "vac":
        return uniform_ranks(matrices, budget), None
    if layer_stats is None:
        fisher = fisher if fisher is not None else fisher_statistics(model, batches, verbose)
        layer_stats = dense_layer_statistics(model, batches, fisher, verbose)
    candidates, costs = [], []
    for stats in layer_stats:
        for name, s in stats.items():
            lin = linears[name]
            m = Matrix(name, lin.out_features, lin.in_features)
            floor = spec.attn_floor if is_attention(name) else spec.mlp_floor
            ranks = candidate_ranks(m, floor)
            weight = 2.0 ** spec.component_weights.get(component(name), 0.0)
            decomp = decompose(lin.weight, "vac", s, spec.fisher_exponent)
            candidates.append(ranks)
            costs.append([weight * c for c in truncation_costs(decomp, s, ranks)])
    ranks = knapsack_ranks(matrices, candidates, costs, budget)
    chosen = sum(c[cand.index(ranks[m.name])] for m, cand, c in zip(matrices, candidates, costs) if ranks[m.name] is not None)
    return ranks, chosen


def factorize_layer(model: nn.Module, index: int, ranks: dict, stats: dict[str, LinearStats], spec: CompressSpec) -> None:
    """Replace the dense linear layers of decoder layer `index` by their factorizations at `ranks`, from their `stats`."""
    for name, lin in layer_linears(model, index).items():
        if ranks.get(name) is None:
            continue
        decomp = decompose(lin.weight, spec.method, stats.get(name), spec.fisher_exponent)
        up, down = decomp.factors(ranks[name], torch.float64)
        if spec.refits:
            up = refit_up(lin.weight, down, stats[name])
        f = FactorizedLinear(lin.in_features, lin.out_features, ranks[name], bias=lin.bias is not None,
                             device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            f.up.weight.copy_(up)
            f.down.weight.copy_(down)
            if lin.bias is not None:
                f.up.bias.copy_(lin.bias)
        model.set_submodule(name, f)


def factorize_layers(
    model: nn.Module, batches: torch.Tensor, ranks: dict, spec: CompressSpec, fisher: dict[str, LinearStats],
    verbose: bool = False,
) -> list[float]:
    """Factorize the decoder layers in `spec.order`, each with the statistics of the model as it is then; seconds per layer.

    A layer's activations come from its cached inputs, which the layers compressed before it produced.
    With `spec.refit` (whiten), the dense model's inputs are carried along too, for `refit_up`.
    """
    layers = decoder_layers(model)
    seconds = [0.0] * len(layers)
    inputs = dense = None
    if spec.method in NEEDS_ACTIVATIONS:
        first, kwargs = embed(model, batches)
        inputs = LayerInputs(layers, first, kwargs)
        if spec.refits:
            dense = LayerInputs(layers, first, kwargs)
    order = layer_order(len(layers), spec.order)
    pending = set(order)
    for i in tqdm(order, desc=f"{spec.method}: factorizing", unit="layer", leave=False, disable=not verbose):
        start = time.perf_counter()
        pending.discard(i)
        linears = {n: m for n, m in layer_linears(model, i).items() if ranks.get(n) is not None}
        if not linears:
            continue
        stats = {n: LinearStats() for n in linears}
        if inputs is not None:
            stats, outputs = layer_statistics(layers[i], linears, inputs.get(i), inputs.kwargs,
                                              dense.get(i) if dense is not None else None)
            if dense is not None:
                dense.put(i + 1, outputs)  # before layer i changes: later layers' dense inputs start here
        factorize_layer(model, i, ranks, _with_fisher(stats, fisher), spec)
        if inputs is not None:
            inputs.invalidate_above(i)
            inputs.keep(pending)
        if dense is not None:
            dense.keep(pending)
        seconds[i] = time.perf_counter() - start
    return seconds


def compress(
    model: nn.Module, batches: torch.Tensor, spec: CompressSpec, verbose: bool = False, dense: DenseStatistics | None = None,
) -> CompressResult:
    """Compress `model` in place to `spec.ratio` on its decoder linear layers; see the module docstring.

    `dense`: this model's dense statistics measured on these `batches` (`dense_statistics`), when already at hand.
    """
    spec.validate()
    dense_total = unique_param_count(model)
    matrices = [Matrix(n, m.out_features, m.in_features) for n, m in all_linears(model).items()]
    was_training = model.training
    model.eval()
    try:
        start = time.perf_counter()
        if dense is not None:
            fisher = dense.fisher
        else:
            fisher = fisher_statistics(model, batches, verbose) if spec.method in NEEDS_FISHER else {}
        fisher_s = time.perf_counter() - start
        ranks, predicted = plan_ranks(model, batches, spec, fisher, verbose, dense.layers if dense is not None else None)
        plan_s = time.perf_counter() - start - fisher_s
        achieved = linear_ratio(matrices, ranks)
        check_ratio(achieved, spec.ratio)
        per_layer = factorize_layers(model, batches, ranks, spec, fisher, verbose)
    finally:
        model.train(was_training)
    return CompressResult(
        ranks=ranks,
        linear_ratio=achieved,
        model_ratio=dense_total / unique_param_count(model),
        linear_params_dense=sum(m.dense_params for m in matrices),
        linear_params=sum(m.params(ranks[m.name]) for m in matrices),
        predicted_cost=predicted,
        seconds={"fisher": fisher_s, "plan": plan_s, "factorize": sum(per_layer), "per_layer": per_layer},
    )
