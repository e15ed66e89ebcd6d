"""Held-out perplexity of every compression method at equal parameter counts, before and after recovery.

    python -m bench.vac_quality [--ratios 1.25 1.8] [--methods svd fwsvd asvd whiten vac] [--recover-steps 300]
                                [--search-budget 8] [--out bench/results/vac_quality.json]
    python -m bench.vac_quality --model smollm2 [--ratios 1.25 1.5 1.8] [--methods svd ... vac vac-search]
                                [--recover kd|none] [--calib-samples 64] [--seq-len 256] [--eval-window 512]
                                [--eval-tokens N] [--out bench/results/vac_smollm2]

Base: the WikiText-103 Llama of bench/vac_common.py, or with `--model smollm2` SmolLM2-135M (dequantized
Q4_1). Each (ratio, method) compresses a fresh copy of the base on the same calibration blocks from
the WikiText-103 subset, is evaluated on the WikiText-2 validation text (non-overlapping windows,
token-weighted; checked to share no article with the calibration text), then recovered by KD from
the dense base and evaluated again (recovery keeps its state with the lowest KL to the dense model on
held-out calibration blocks, step 0 included; `--select final` keeps the last state instead). On the
WikiText base, VAC is also run with LoRA-only recovery, and with the evolutionary search (fitness on
held-out calibration blocks only); `vac-search` is also a method of its own. Every row records the
achieved ratio and the compression's wall time (per layer too) and CPU time of this process.

Resuming: on the WikiText base, rows already in --out (one JSON) are kept and skipped. With
`--model smollm2`, --out is a directory with one JSON per (ratio, method, recovery) cell and one for
the dense model, each with the setup it was measured under; an existing cell is skipped, and one
measured under another setup is refused (pick another --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from bench.vac_common import RESULTS, SEQ_LEN, Bench, load_results, open_bench
from scu.report.records import atomic_write_json
from scu.vac.compress import CompressSpec, compress
from scu.vac.evaluate import perplexity
from scu.vac.recover import RecoverSpec, kept_row, recover
from scu.vac.search import evolve

SMOLLM2 = "SmolLM2-135M, dequantized Q4_1"


def measure_cell(
    bench: Bench, teacher: torch.nn.Module, method: str, mode: str, ratio: float, rspec: RecoverSpec,
    evaluate: Callable[[torch.nn.Module], dict], args: argparse.Namespace,
) -> dict:
    """Compress a fresh copy at `ratio` with `method`, evaluate, recover with `mode` (unless none), evaluate again."""
    data = bench.data
    start, cpu = time.time(), time.process_time()
    if method == "vac-search":
        model, best, history = evolve(bench.fresh, data["calib"], data["heldout"], CompressSpec("vac", ratio),
                                      args.search_budget, population=4, verbose=args.progress, workers=args.search_workers)
        result, extra = best.result, {"search": [c.to_json() for c in history], "search_workers": args.search_workers}
    else:
        model = bench.fresh()
        spec = CompressSpec(method, ratio)
        result, extra = compress(model, data["calib"], spec, verbose=args.progress), {"spec": vars(spec)}
    row = {"ratio": ratio, "method": method, "linear_ratio": result.linear_ratio, "model_ratio": result.model_ratio,
           "ratio_error": result.linear_ratio / ratio - 1, "compress_s": time.time() - start,
           "compress_cpu_s": time.process_time() - cpu, "compress_seconds": result.seconds, **extra}
    before = evaluate(model)
    row |= {"ppl_before": before["ppl"], "bpt_before": before["bpt"], "tokens": before["tokens"], "recover": mode,
            "ranks": result.ranks}
    if mode == "none":
        return row
    start, cpu = time.time(), time.process_time()
    lr = args.lora_lr if mode == "lora" else args.recover_lr
    spec = RecoverSpec(**{**vars(rspec), "mode": "kd" if mode == "kd+nll" else mode, "lr": lr,
                          "nll_weight": 1.0 if mode == "kd+nll" else rspec.nll_weight})
    model, history = recover(model, teacher, data["recover"], spec,
                             heldout=data["heldout"] if args.select == "heldout-kl" else None, verbose=args.progress)
    after = evaluate(model)
    return row | {"recover_lr": lr, "ppl_after": after["ppl"], "bpt_after": after["bpt"], "recover_s": time.time() - start,
                  "recover_cpu_s": time.process_time() - cpu,
                  "nll_weight": spec.nll_weight, "recover_final": history[-1], "select": args.select,
                  "recover_selected": kept_row(history), "recover_history_start": history[0].get("heldout_kl")}


def show(key: str, row: dict) -> None:
    print(key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                if k not in ("ranks", "compress_seconds", "search")}, flush=True)


def run_wikitext(args: argparse.Namespace, rspec: RecoverSpec) -> None:
    """All rows in one JSON (--out), keyed ratio/method/recovery."""
    bench = open_bench()
    data = bench.data
    teacher = bench.fresh()
    out = Path(args.out or RESULTS / "vac_quality.json")
    results = load_results(out)
    results.setdefault("rows", {})
    results["setup"] = {
        "base": str(bench.base), "seq_len": SEQ_LEN, "calib_blocks": len(data["calib"]), "heldout_blocks": len(data["heldout"]),
        "eval_tokens": int(len(data["eval_ids"])), "recover_steps": args.recover_steps, "recover_lr": args.recover_lr,
        "lora_lr": args.lora_lr, "nll_weight": args.nll_weight, "threads": torch.get_num_threads(),
    }

    def record(key: str, row: dict) -> None:
        results["rows"][key] = row
        atomic_write_json(out, results)
        show(key, row)

    def evaluate(model) -> dict:
        return perplexity(model, data["eval_ids"], SEQ_LEN)

    if "dense" not in results["rows"]:
        record("dense", evaluate(teacher))
    for ratio in args.ratios:
        # kd+nll: the published recipe's NLL term (weight 1) next to the KL, to show what it does here
        jobs = [(m, args.recover) for m in args.methods]
        if not args.methods_only:
            jobs += [("vac", "kd+nll"), ("vac", "lora"), ("vac-search", "kd")]
        for method, mode in jobs:
            key = (f"{ratio}/{method}/{mode}" + (f"/seed{args.recover_seed}" if args.recover_seed else "")
                   + ("/final" if args.select == "final" else ""))
            if key not in results["rows"]:
                record(key, measure_cell(bench, teacher, method, mode, ratio, rspec, evaluate, args))


def run_smollm2(args: argparse.Namespace, rspec: RecoverSpec) -> None:
    """One JSON per cell under --out (a directory), each with its setup."""
    bench = open_bench("smollm2", args.seq_len, args.calib_samples)
    data = bench.data
    eval_ids = data["eval_ids"][: args.eval_tokens] if args.eval_tokens else data["eval_ids"]
    out = Path(args.out or RESULTS / "vac_smollm2")
    out.mkdir(parents=True, exist_ok=True)
    setup = {
        "model": SMOLLM2, "base": str(bench.base), "calib": "wiki103_subset.txt (90% of articles; 10% held out)",
        "eval": "wiki2_valid.txt", "seq_len": args.seq_len, "calib_blocks": len(data["calib"]),
        "heldout_blocks": len(data["heldout"]), "eval_window": args.eval_window, "eval_tokens_requested": args.eval_tokens,
        "recover_steps": args.recover_steps, "recover_lr": args.recover_lr, "lora_lr": args.lora_lr,
        "nll_weight": args.nll_weight, "select": args.select, "recover_seed": args.recover_seed,
        "search_budget": args.search_budget,
    }

    def done(path: Path) -> bool:
        if not path.exists():
            return False
        if json.loads(path.read_text())["setup"] != setup:
            sys.exit(f"{path} was measured under another setup; pass another --out for this one")
        return True

    def record(path: Path, row: dict) -> None:
        atomic_write_json(path, {"setup": setup, "threads": torch.get_num_threads(), "row": row})
        show(path.stem, row)

    def evaluate(model) -> dict:
        return perplexity(model, eval_ids, args.eval_window)

    teacher = bench.fresh()
    if not done(out / "dense.json"):
        start = time.time()
        record(out / "dense.json", evaluate(teacher) | {"eval_s": time.time() - start})
    for ratio in args.ratios:
        for method in args.methods:
            path = out / f"{ratio}_{method}_{args.recover}.json"
            if not done(path):
                record(path, measure_cell(bench, teacher, method, args.recover, ratio, rspec, evaluate, args))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["wikitext", "smollm2"], default="wikitext",
                    help="the pre-trained WikiText base, or SmolLM2-135M (dequantized Q4_1)")
    ap.add_argument("--ratios", type=float, nargs="+", default=None, help="default: 1.25 1.8 (wikitext), 1.25 1.5 1.8 (smollm2)")
    ap.add_argument("--methods", nargs="+", default=None, choices=["svd", "fwsvd", "asvd", "whiten", "vac", "vac-search"],
                    help="default: svd fwsvd asvd whiten vac (wikitext, plus VAC variants), and vac-search (smollm2)")
    ap.add_argument("--recover", choices=["kd", "lora", "none"], default="kd", help="recovery of every cell (default: %(default)s)")
    ap.add_argument("--recover-steps", type=int, default=300)
    ap.add_argument("--recover-lr", type=float, default=3e-5)
    ap.add_argument("--nll-weight", type=float, default=0.0)
    ap.add_argument("--lora-lr", type=float, default=3e-4, help="LoRA adapters start at zero: a higher rate")
    ap.add_argument("--search-budget", type=int, default=8)
    ap.add_argument("--search-workers", type=int, default=1, help="candidates compressed at once, in threads (default: %(default)s)")
    ap.add_argument("--recover-seed", type=int, default=0, help="batch order of recovery; rows of seeds > 0 are keyed .../seedN")
    ap.add_argument("--methods-only", action="store_true", help="wikitext: skip the VAC variants (kd+nll, lora, search)")
    ap.add_argument("--select", choices=["heldout-kl", "final"], default="heldout-kl",
                    help="recovery keeps its lowest held-out-KL state, or its last one (rows keyed .../final)")
    ap.add_argument("--calib-samples", type=int, default=64, help="smollm2: calibration blocks (default: %(default)s)")
    ap.add_argument("--seq-len", type=int, default=256, help="smollm2: calibration block length (default: %(default)s)")
    ap.add_argument("--eval-window", type=int, default=512, help="smollm2: evaluation window in tokens (default: %(default)s)")
    ap.add_argument("--eval-tokens", type=int, default=None,
                    help="smollm2: evaluate on the first N tokens of WikiText-2 validation (default: all)")
    ap.add_argument("--progress", action="store_true", help="progress bars and recovery log on stderr")
    ap.add_argument("--out", default=None, help="default: bench/results/vac_quality.json (wikitext), bench/results/vac_smollm2/ (smollm2)")
    args = ap.parse_args()
    smol = args.model == "smollm2"
    args.ratios = args.ratios or ([1.25, 1.5, 1.8] if smol else [1.25, 1.8])
    args.methods = args.methods or ["svd", "fwsvd", "asvd", "whiten", "vac"] + (["vac-search"] if smol else [])
    rspec = RecoverSpec(mode="kd", steps=args.recover_steps, lr=args.recover_lr, nll_weight=args.nll_weight, seed=args.recover_seed)
    (run_smollm2 if smol else run_wikitext)(args, rspec)


if __name__ == "__main__":
    main()
