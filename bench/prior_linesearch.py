"""Exploration: a prior scale from one line search at the start, before any training. Does it transfer between bases?

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m bench.prior_linesearch --scale cpu|real [--seed 0] [--blocks 64|0]

At LoRA's start (B = 0) the training data's mean gradient g moves only B. Along -g, the training CE has a minimum
at some step t*; the change that step makes, dW* = s * (-t* g_B) * A per module, is how far the data pulls in its
steepest direction, measured in one pass and one line search, with no fit. Its scale per adapter entry,
sigma_ls = ||dW*|| / sqrt(p), is compared with the lambda-1 prior scale each harness found best on validation
(tiny base, 16k tokens: 0.1; SmolLM2, 18k tokens: 0.01). A rule serves both bases if sigma_ls / best is about the same
on both. The search is scu.torch.prior_linesearch's, over --blocks evenly spaced training blocks (0: all).
Writes bench/results/prior_linesearch/<scale>_seed<N>_blocks<B>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

BEST = {"cpu": 0.1, "real": 0.01}  # the lambda-1 prior scale of each harness's best fixed lambda (docs/method.md)


def measure(scale_name: str, seed: int, max_blocks: int) -> dict[str, Any]:
    from bench.scu_vs_baselines import DEFAULT_DATA, REAL_SCALES, SCALES, prepare_real, prepare_scale
    from scu.config.schema import DataSection, LoraSection, ModelSection
    from scu.data.corpus import load_train_val
    from scu.torch.model import add_lora, load_model, load_tokenizer
    from scu.torch.prior_linesearch import LINESEARCH_SCALE, line_search_sigma

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
    sigma, found = line_search_sigma(model, data.train_blocks, s.batch_size, max_blocks or len(data.train_blocks))
    return {"scale": scale_name, "seed": seed, "base": base, "tokens": data.tokens_per_epoch,
            "blocks_of": len(data.train_blocks), **found, "sigma": sigma, "scale_factor": LINESEARCH_SCALE,
            "best_sigma": BEST[scale_name], "sigma_ls_over_best": found["sigma_ls"] / BEST[scale_name],
            "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("cpu", "real"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=64, help="training blocks the search reads (0: all of them)")
    args = ap.parse_args(argv)
    from scu.report.records import atomic_write_json

    out = Path("bench/results/prior_linesearch") / f"{args.scale}_seed{args.seed}_blocks{args.blocks or 'all'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = measure(args.scale, args.seed, args.blocks)
    atomic_write_json(out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
