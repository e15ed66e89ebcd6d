"""Evolutionary search over how VAC compresses: order, Fisher exponent, per-component allocation.

A genome is (order, fisher_exponent, one log2 cost multiplier per projection kind). A candidate is
a full `vac` compression of a fresh copy of the dense model with that genome, so the knapsack puts
every candidate on the target ratio (checked; each candidate's achieved ratio is recorded). Fitness
is the mean NLL on held-out *calibration* documents, never on evaluation text. The first candidate
is the unsearched default, so the search can only improve on it (on the held-out data). The dense
model's Fisher and activation statistics are measured once and shared by every candidate.

Steady state: after an initial population, each evaluation breeds one child from two tournament
winners (uniform crossover, Gaussian mutation) until the budget of evaluations is spent.

`workers` > 1 evaluates that many candidates at once, in threads: compression is torch operations that
release the GIL (decompositions, matmuls), so W candidates at a time keep W cores busy. Candidates are
then proposed in rounds of `workers`, each bred from the history before its round; with `workers` = 1
that is the serial search above.
"""

from __future__ import annotations

import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from scu import ScuError
from scu.vac.choices import ORDERS
from scu.vac.compress import CompressResult, CompressSpec, all_linears, component, compress, dense_statistics
from scu.vac.evaluate import window_nll

WEIGHT_RANGE = 3.0


@dataclass
class Candidate:
    spec: CompressSpec
    heldout_nll: float
    result: CompressResult

    def to_json(self) -> dict:
        s = self.spec
        return {
            "order": s.order, "fisher_exponent": s.fisher_exponent, "component_weights": s.component_weights,
            "heldout_nll": self.heldout_nll, "linear_ratio": self.result.linear_ratio,
        }


def _random_spec(base: CompressSpec, kinds: list[str], rng: random.Random) -> CompressSpec:
    return replace(
        base,
        order=rng.choice(ORDERS),
        fisher_exponent=rng.uniform(0.0, 1.0),
        component_weights={k: rng.uniform(-WEIGHT_RANGE / 2, WEIGHT_RANGE / 2) for k in kinds},
    )


def _child(a: CompressSpec, b: CompressSpec, kinds: list[str], rng: random.Random) -> CompressSpec:
    pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
    order = pick(a.order, b.order)
    if rng.random() < 0.2:
        order = rng.choice(ORDERS)
    alpha = min(1.0, max(0.0, pick(a.fisher_exponent, b.fisher_exponent) + rng.gauss(0, 0.15)))
    weights = {
        k: min(WEIGHT_RANGE, max(-WEIGHT_RANGE, pick(a.component_weights.get(k, 0.0), b.component_weights.get(k, 0.0)) + rng.gauss(0, 0.5)))
        for k in kinds
    }
    return replace(a, order=order, fisher_exponent=alpha, component_weights=weights)


def evolve(
    make_model: Callable[[], nn.Module],
    calib: torch.Tensor,
    heldout: torch.Tensor,
    base: CompressSpec,
    budget: int,
    population: int = 4,
    seed: int = 0,
    verbose: bool = True,
    workers: int = 1,
) -> tuple[nn.Module, Candidate, list[Candidate]]:
    """(best compressed model, its candidate, every candidate in evaluation order) within `budget` evaluations."""
    if base.method != "vac":
        raise ScuError("--search tunes VAC's allocation; use it with --method vac")
    if budget < 1:
        raise ScuError("--budget must be at least 1 evaluation")
    if workers < 1:
        raise ScuError("--workers must be at least 1")
    rng = random.Random(seed)
    first = make_model()
    kinds = sorted({component(n) for n in all_linears(first)})
    dense = dense_statistics(first, calib, verbose)  # shared: no candidate changes the dense model's statistics
    history: list[Candidate] = []
    best_model, best = None, None

    def propose(i: int) -> CompressSpec:
        if i == 0:
            return replace(base, component_weights={k: 0.0 for k in kinds})
        if i < population:
            return _random_spec(base, kinds, rng)
        parents = [min(rng.sample(history, min(2, len(history))), key=lambda c: c.heldout_nll) for _ in range(2)]
        return _child(parents[0].spec, parents[1].spec, kinds, rng)

    def run(model: nn.Module, spec: CompressSpec) -> tuple[nn.Module, Candidate]:
        """Compress `model` in place with `spec` and score it on the held-out calibration blocks."""
        result = compress(model, calib, spec, dense=dense)
        nll, tokens = window_nll(model, heldout.reshape(-1), heldout.shape[1])
        return model, Candidate(spec, nll / tokens, result)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while len(history) < budget:
            round_ = range(len(history), min(len(history) + workers, budget))
            specs = [propose(i) for i in round_]  # bred from the history before this round
            models = [first if i == 0 else make_model() for i in round_]  # loaded in this thread: from_pretrained is not made to run concurrently
            for model, cand in pool.map(run, models, specs):
                history.append(cand)
                if best is None or cand.heldout_nll < best.heldout_nll:
                    best, best_model = cand, model
                spec = cand.spec
                if verbose:
                    print(
                        f"search {len(history)}/{budget}: order={spec.order} fisher_exponent={spec.fisher_exponent:.2f} "
                        f"ratio={cand.result.linear_ratio:.4f} heldout_nll={cand.heldout_nll:.4f} best={best.heldout_nll:.4f}",
                        file=sys.stderr, flush=True,
                    )
            del models, model  # only the best candidate's model outlives its round
    return best_model, best, history
