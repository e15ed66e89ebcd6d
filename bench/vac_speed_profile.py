"""Where a CPU prefill spends its time, dense against factorized: the "why" behind bench/vac_artifacts' speed-ups.

    python -m bench.vac_speed_profile [--ratio 1.8] [--rounds 5] [--out bench/results/vac_speed_profile.json]

For the WikiText base (VAC) and the 110M random-weight Llama of vac_artifacts (plain SVD, same ratio),
one 512-token prefill per round runs under torch.profiler, one thread. Self CPU time is split into
linear-layer matmuls (aten::mm / addmm: every projection, every factor and the head), attention
(the SDPA kernel) and everything else (norms, activations, embedding, copies, dispatch). The
linear matmuls' achieved GFLOP/s follow from their multiply-accumulates per token. Medians over rounds.
The prefill and decode speed-ups are also timed without the profiler, interleaved (scu.vac.evaluate.measure_speed).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

from bench.vac_artifacts import LARGE
from bench.vac_common import RESULTS, open_bench
from scu.report.records import atomic_write_json
from scu.vac.compress import CompressSpec, compress
from scu.vac.evaluate import linear_flops_params, measure_speed, median_ratio

PREFILL = 512
MATMUL_OPS = {"aten::mm", "aten::addmm"}


def category(op: str) -> str:
    if op in MATMUL_OPS:
        return "linear_matmul"
    return "attention" if "scaled_dot_product" in op or op in {"aten::bmm", "aten::baddbmm"} else "other"


@torch.no_grad()
def profile_prefill(model: torch.nn.Module, vocab: int, rounds: int) -> dict[str, float]:
    ids = torch.randint(0, vocab, (1, PREFILL), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, use_cache=False)  # warm-up
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(input_ids=ids, use_cache=False)
        ms = {"linear_matmul": 0.0, "attention": 0.0, "other": 0.0}
        for event in prof.key_averages():
            ms[category(event.key)] += event.self_cpu_time_total / 1e3
        ms["total"] = sum(ms.values())
        per_round.append(ms)
    out = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    out["linear_share"] = out["linear_matmul"] / out["total"]
    out["linear_gflop_s"] = 2 * linear_flops_params(model) * PREFILL / (out["linear_matmul"] / 1e3) / 1e9
    return out


def compare(models: dict[str, torch.nn.Module], vocab: int, rounds: int) -> dict[str, dict[str, float]]:
    """Profiled breakdown per model, and the same speed-up timed without the profiler (interleaved, as vac_artifacts)."""
    timed = measure_speed(models, vocab, prefill_len=PREFILL, decode_tokens=32, rounds=rounds)
    rows = {name: profile_prefill(m, vocab, rounds) for name, m in models.items()}
    dense_name = next(iter(rows))
    for name, row in rows.items():
        row["timed_prefill_tok_s"] = timed[name]["prefill"]
        row["timed_decode_tok_s"] = timed[name]["decode"]
        if name != dense_name:
            row["timed_prefill_speedup"] = median_ratio(timed[name]["prefill_rounds"], timed[dense_name]["prefill_rounds"])
            row["timed_decode_speedup"] = median_ratio(timed[name]["decode_rounds"], timed[dense_name]["decode_rounds"])
    for name, row in rows.items():
        row["linear_macs_per_token"] = linear_flops_params(models[name])
        if name != dense_name:
            d = rows[dense_name]
            row["linear_matmul_speedup"] = d["linear_matmul"] / row["linear_matmul"]
            row["linear_mac_ratio"] = d["linear_macs_per_token"] / row["linear_macs_per_token"]
            row["total_speedup"] = d["total"] / row["total"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=1.8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "vac_speed_profile.json"))
    args = ap.parse_args()
    bench = open_bench()
    tokenizer, data, fresh = bench.tokenizer, bench.data, bench.fresh
    vac = fresh()
    compress(vac, data["calib"], CompressSpec("vac", args.ratio))
    results = {"ratio": args.ratio, "prefill_tokens": PREFILL, "threads": torch.get_num_threads(), "rounds": args.rounds}
    results["base"] = compare({"dense": fresh(), f"vac-{args.ratio}": vac}, len(tokenizer), args.rounds)
    print("base", results["base"], flush=True)
    torch.manual_seed(0)
    large = LlamaForCausalLM(LlamaConfig(**LARGE)).eval()
    large_svd = LlamaForCausalLM(LlamaConfig(**LARGE)).eval()
    large_svd.load_state_dict(large.state_dict())
    compress(large_svd, data["calib"][:1], CompressSpec("svd", args.ratio))
    results["large"] = compare({"dense": large, f"svd-{args.ratio}": large_svd}, LARGE["vocab_size"], args.rounds)
    print("large", results["large"], flush=True)
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
