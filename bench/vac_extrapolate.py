"""From SmolLM2's measured compression cost to a 7B model: the per-matrix decomposition, timed and extrapolated.

    python -m bench.vac_extrapolate [--sizes 256 512 1024 1536] [--rounds 3] [--out bench/results/vac_extrapolate.json]

Compression has two parts. (1) Calibration passes: the activation statistics (one forward pass through the model
from cached layer inputs) and, for fwsvd/vac, the Fisher (one forward and backward pass), both linear in
parameters × calibration tokens. (2) One decomposition per linear matrix (`scu.vac.factorize.decompose`, float64:
Cholesky of XᵀX, then an SVD), twice per matrix for `vac` (allocation, then factorization). This script times
`decompose(W, "whiten", stats)` on one thread for square matrices of the given sizes and for SmolLM2-135M's
shapes and their 2.7× larger versions, fits t = a · m·n·min(m, n) + b · n³ (SVD plus Cholesky, out m × in n;
least squares on relative error), reports the fit's error on every timed shape, and applies it to Llama-2-7B's
shapes (32 layers; hidden 4096, MLP 11008). The calibration passes are scaled by the
parameter ratio from the measured SmolLM2 Fisher time in `bench/results/vac_smollm2/` when it is there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.vac_common import RESULTS, setup_threads
from scu.report.records import atomic_write_json
from scu.vac.factorize import LinearStats, decompose

SMOLLM2 = {"layers": 30, "shapes": [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)],
           "params": 134.5e6}
LLAMA2_7B = {"layers": 32, "shapes": [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)], "params": 6.74e9}


def terms(m: int, n: int) -> tuple[float, float]:
    return float(m * n * min(m, n)), float(n ** 3)


def time_decompose(m: int, n: int, rounds: int) -> float:
    """Median seconds of one whitened decomposition of an m x n matrix (synthetic weights and statistics)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(m, n, generator=g) / n ** 0.5
    stats = LinearStats()
    stats.add(torch.randn(4 * n, n, generator=g, dtype=torch.float64))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        decompose(W, "whiten", stats)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def predict(coef: tuple[float, float], m: int, n: int) -> float:
    svd, chol = terms(m, n)
    return coef[0] * svd + coef[1] * chol


def fit(timed: dict[tuple[int, int], float]) -> tuple[float, float]:
    """(a, b) minimizing the squared relative error of a * svd + b * chol over the timed shapes."""
    X = torch.tensor([[v / t for v in terms(m, n)] for (m, n), t in timed.items()], dtype=torch.float64)
    coef = torch.linalg.lstsq(X, torch.ones(len(timed), 1, dtype=torch.float64)).solution.flatten()
    return float(coef[0]), float(coef[1])


def per_layer(model: dict, coef: tuple[float, float]) -> float:
    return sum(predict(coef, m, n) for m, n in model["shapes"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 1536])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "vac_extrapolate.json"))
    args = ap.parse_args()
    setup_threads()
    shapes = [(n, n) for n in args.sizes] + list(dict.fromkeys(SMOLLM2["shapes"]))
    shapes += [(int(m * 2.7), int(n * 2.7)) for m, n in dict.fromkeys(SMOLLM2["shapes"]) if m != n]
    timed = {}
    for m, n in shapes:
        timed[(m, n)] = time_decompose(m, n, args.rounds)
        print(f"decompose {m} x {n}: {timed[(m, n)]:.3f} s", flush=True)
    coef = fit(timed)
    out: dict = {"threads": torch.get_num_threads(), "coef_svd_chol": coef,
                 "fit": {f"{m}x{n}": {"measured_s": t, "fitted_s": predict(coef, m, n)} for (m, n), t in timed.items()}}
    for name, model in (("smollm2", SMOLLM2), ("llama2_7b", LLAMA2_7B)):
        layer = per_layer(model, coef)
        out[name] = {"decompose_per_layer_s": layer, "decompose_all_s": layer * model["layers"]}
    fisher_cell = RESULTS / "vac_smollm2" / "1.25_vac_none.json"
    if fisher_cell.exists():
        row = json.loads(fisher_cell.read_text())["row"]
        scale = LLAMA2_7B["params"] / SMOLLM2["params"]
        out["calibration"] = {"smollm2_fisher_s": row["compress_seconds"]["fisher"], "param_ratio": scale,
                              "llama2_7b_fisher_s": row["compress_seconds"]["fisher"] * scale}
    for name in ("smollm2", "llama2_7b"):
        print(name, json.dumps(out[name]), flush=True)
    if "calibration" in out:
        print("calibration", json.dumps(out["calibration"]))
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
