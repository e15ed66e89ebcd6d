"""Held-out perplexity of every compression method at equal parameter counts, before and after recovery.

    python -m bench.vac_quality [--ratios 1.25 1.8] [--methods svd fwsvd asvd whiten vac] [--recover-steps 300]
                                [--search-budget 8] [--out bench/results/vac_quality.json]

Base: the WikiText-103 Llama of bench/vac_common.py. Each (ratio, method) compresses a fresh copy
of the base on the same 64 calibration blocks, is evaluated on the whole WikiText-2 validation text
(non-overlapping 128-token windows, token-weighted), then recovered by KD from the dense base and
evaluated again (recovery keeps its state with the lowest KL to the dense model on held-out
calibration blocks, step 0 included; `--select final` keeps the last state instead). VAC is also run with LoRA-only recovery, and with the evolutionary search (fitness
on held-out calibration blocks only). Every row records the achieved ratio. Rows already in --out
are kept and skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.vac_common import RESULTS, SEQ_LEN, load_results, open_bench
from scu.report.records import atomic_write_json
from scu.vac.compress import CompressSpec, compress
from scu.vac.evaluate import perplexity
from scu.vac.recover import RecoverSpec, kept_row, recover
from scu.vac.search import evolve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.25, 1.8])
    ap.add_argument("--methods", nargs="+", default=["svd", "fwsvd", "asvd", "whiten", "vac"])
    ap.add_argument("--recover-steps", type=int, default=300)
    ap.add_argument("--recover-lr", type=float, default=3e-5)
    ap.add_argument("--nll-weight", type=float, default=0.0)
    ap.add_argument("--lora-lr", type=float, default=3e-4, help="LoRA adapters start at zero: a higher rate")
    ap.add_argument("--search-budget", type=int, default=8)
    ap.add_argument("--recover-seed", type=int, default=0, help="batch order of recovery; rows of seeds > 0 are keyed .../seedN")
    ap.add_argument("--methods-only", action="store_true", help="skip the VAC variants (kd+nll, lora, search)")
    ap.add_argument("--select", choices=["heldout-kl", "final"], default="heldout-kl",
                    help="recovery keeps its lowest held-out-KL state, or its last one (rows keyed .../final)")
    ap.add_argument("--out", default=str(RESULTS / "vac_quality.json"))
    args = ap.parse_args()
    bench = open_bench()
    base, data, fresh = bench.base, bench.data, bench.fresh
    teacher = fresh()
    out = Path(args.out)
    results = load_results(out)
    results.setdefault("rows", {})
    results["setup"] = {
        "base": str(base), "seq_len": SEQ_LEN, "calib_blocks": len(data["calib"]), "heldout_blocks": len(data["heldout"]),
        "eval_tokens": int(len(data["eval_ids"])), "recover_steps": args.recover_steps, "recover_lr": args.recover_lr, "lora_lr": args.lora_lr,
        "nll_weight": args.nll_weight,
        "threads": torch.get_num_threads(),
    }

    def record(key: str, row: dict) -> None:
        results["rows"][key] = row
        atomic_write_json(out, results)
        print(key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "ranks"}, flush=True)

    def evaluate(model) -> dict:
        return perplexity(model, data["eval_ids"], SEQ_LEN)

    if "dense" not in results["rows"]:
        record("dense", evaluate(teacher))

    rspec = RecoverSpec(mode="kd", steps=args.recover_steps, lr=args.recover_lr, nll_weight=args.nll_weight, seed=args.recover_seed)
    for ratio in args.ratios:
        # kd+nll: the published recipe's NLL term (weight 1) next to the KL, to show what it does here
        jobs = [(m, "kd") for m in args.methods]
        if not args.methods_only:
            jobs += [("vac", "kd+nll"), ("vac", "lora"), ("vac-search", "kd")]
        for method, mode in jobs:
            key = (f"{ratio}/{method}/{mode}" + (f"/seed{args.recover_seed}" if args.recover_seed else "")
                   + ("/final" if args.select == "final" else ""))
            if key in results["rows"]:
                continue
            start = time.time()
            if method == "vac-search":
                model, best, history = evolve(fresh, data["calib"], data["heldout"], CompressSpec("vac", ratio),
                                              args.search_budget, population=4)
                result, extra = best.result, {"search": [c.to_json() for c in history]}
            else:
                model = fresh()
                result, extra = compress(model, data["calib"], CompressSpec(method, ratio)), {}
            row = {"ratio": ratio, "method": method, "linear_ratio": result.linear_ratio, "model_ratio": result.model_ratio,
                   "ratio_error": result.linear_ratio / ratio - 1, "compress_s": time.time() - start, **extra}
            before = evaluate(model)
            row |= {"ppl_before": before["ppl"], "bpt_before": before["bpt"], "tokens": before["tokens"]}
            start = time.time()
            lr = args.lora_lr if mode == "lora" else args.recover_lr
            spec = RecoverSpec(**{**vars(rspec), "mode": "kd" if mode == "kd+nll" else mode, "lr": lr,
                                  "nll_weight": 1.0 if mode == "kd+nll" else rspec.nll_weight})
            model, history = recover(model, teacher, data["recover"], spec,
                                     heldout=data["heldout"] if args.select == "heldout-kl" else None)
            after = evaluate(model)
            row |= {"recover": mode, "recover_lr": lr, "ppl_after": after["ppl"], "bpt_after": after["bpt"], "recover_s": time.time() - start,
                    "nll_weight": spec.nll_weight, "recover_final": history[-1], "select": args.select,
                    "recover_selected": kept_row(history),
                    "recover_history_start": history[0].get("heldout_kl"),
                    "ranks": result.ranks}
            record(key, row)


if __name__ == "__main__":
    main()
