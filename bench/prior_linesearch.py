"""Exploration: a prior scale from one line search at the start, before any training. Does it transfer between bases?

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m bench.prior_linesearch --scale cpu|real [--seed 0] [--blocks 64|0] [--direction lora|svd] [--draws 4|0]

At LoRA's start (B = 0) the training data's mean gradient g moves only B. Along -g, the training CE has a minimum
at some step t*; the change that step makes, dW* = s * (-t* g_B) * A per module, is how far the data pulls in its
steepest direction, measured in one pass and one line search, with no fit. Its scale per adapter entry,
sigma_ls = ||dW*|| / sqrt(p), is compared with the lambda-1 prior scale each harness found best on validation
(tiny base, 16k tokens: 0.1; SmolLM2, 18k tokens: 0.01). A rule serves both bases if sigma_ls / best is about the same
on both. The search is scu.torch.prior_linesearch's, over --blocks evenly spaced training blocks (0: all).
The product's search repeats it over --draws fixed draws of LoRA's A, each on its share of the blocks, and takes
the geometric mean; `--draws 0` is the search with the seed's own A over all the blocks (the product's until
2026-12-07, twenty-first session). Writes bench/results/prior_linesearch/<scale>_seed<N>_blocks<B>[_draws<K>].json.

`--direction svd` (exploration, not in the product): the search runs along the best rank-r approximation of each
adapted matrix's full gradient (its top r singular triplets) instead of LoRA's own first step, which moves dW only
within the row space of the random A. The direction then no longer depends on the seed's A. Writes
<scale>_seed<N>_blocks<B>_svd.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from scu.torch.prior_linesearch import (LINESEARCH_DRAWS, LINESEARCH_SCALE, evenly_spaced, line_search_sigma,
                                       mean_gradient, search_along)

BEST = {"cpu": 0.1, "real": 0.01}  # the lambda-1 prior scale of each harness's best fixed lambda (docs/method.md)


def svd_direction_search(model: torch.nn.Module, blocks: Any, batch_size: int, max_blocks: int) -> dict[str, Any]:
    """The line search along the top-r truncation of each LoRA layer's full-weight gradient (B = 0: the change is
    the base weights'); sigma_ls = ||dW*|| / sqrt(p), p the adapters' trainable entries as in the product's search."""
    import math

    from scu.torch.regularizer import lora_pairs

    pairs = lora_pairs(model, keep_init=False)
    weights = [p.module.get_base_layer().weight for p in pairs]
    subset = evenly_spaced(blocks, max_blocks)
    model.eval()
    for w in weights:
        w.requires_grad_(True)
    try:
        grads = mean_gradient(model, weights, subset, batch_size)
    finally:
        for w in weights:
            w.requires_grad_(False)
    directions = []
    for p, g in zip(pairs, grads):
        u, sv, vh = torch.linalg.svd(g.float(), full_matrices=False)
        r = p.A.shape[0]
        directions.append((u[:, :r] * sv[:r]) @ vh[:r])
    d_norm = math.sqrt(sum(float((d * d).sum()) for d in directions))
    best, curve = search_along(model, weights, directions, subset, batch_size, lambda t: t * d_norm)
    dof = sum(p.A.numel() + p.B.numel() for p in pairs)
    return {"blocks": len(subset), "direction_norm": d_norm, "t_star": best["t"], "dw_norm": best["dw_norm"],
            "ce_drop_bits": curve[0]["ce_bits"] - best["ce_bits"], "dof": dof,
            "sigma_ls": best["dw_norm"] / math.sqrt(dof), "evaluations": len(curve)}


def measure(scale_name: str, seed: int, max_blocks: int, direction: str = "lora",
            draws: int = LINESEARCH_DRAWS) -> dict[str, Any]:
    from bench.scu_vs_baselines import DEFAULT_DATA, REAL_SCALES, SCALES, prepare_real, prepare_scale
    from scu.config.schema import DataSection, LoraSection, ModelSection
    from scu.data.corpus import load_train_val
    from scu.torch.model import add_lora, load_model, load_tokenizer

    torch.set_num_threads(1)
    if scale_name == "real":
        scale = REAL_SCALES["real"]
        base, manifest, _ = prepare_real(scale, DEFAULT_DATA.resolve())
    else:
        scale = SCALES["cpu"]
        base_path, manifest, _ = prepare_scale(scale, DEFAULT_DATA.resolve())
        base = str(base_path)
    s = scale.run
    section = ModelSection(base_model=base)
    data = load_train_val(DataSection(train_data=manifest["train"][str(scale.main_tokens)]["path"], val_fraction=0.0),
                          load_tokenizer(section), s.block_size, seed)
    torch.manual_seed(seed)
    model = add_lora(load_model(section), LoraSection(rank=s.rank, alpha=2 * s.rank, dropout=0.0), False)
    t0 = time.perf_counter()
    n_blocks = max_blocks or len(data.train_blocks)
    if direction == "svd":
        found = svd_direction_search(model, data.train_blocks, s.batch_size, n_blocks)
        sigma = LINESEARCH_SCALE * found["sigma_ls"]
    else:
        sigma, found = line_search_sigma(model, data.train_blocks, s.batch_size, n_blocks, draws)
    return {"scale": scale_name, "seed": seed, "direction": direction, "base": base, "tokens": data.tokens_per_epoch,
            "blocks_of": len(data.train_blocks), **found, "sigma": sigma, "scale_factor": LINESEARCH_SCALE,
            "best_sigma": BEST[scale_name], "sigma_ls_over_best": found["sigma_ls"] / BEST[scale_name],
            "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("cpu", "real"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=64, help="training blocks the search reads (0: all of them)")
    ap.add_argument("--direction", choices=("lora", "svd"), default="lora",
                    help="lora: the product's search (LoRA's first step); svd: each gradient's top-r truncation")
    ap.add_argument("--draws", type=int, default=LINESEARCH_DRAWS,
                    help="lora: the search over this many fixed draws of A, geometric mean (0: the seed's own A)")
    args = ap.parse_args(argv)
    from scu.report.records import atomic_write_json

    suffix = "_svd" if args.direction == "svd" else f"_draws{args.draws}" if args.draws else ""
    out = Path("bench/results/prior_linesearch") / f"{args.scale}_seed{args.seed}_blocks{args.blocks or 'all'}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = measure(args.scale, args.seed, args.blocks, args.direction, args.draws)
    atomic_write_json(out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
