"""`scu eval-ppl`: perplexity over non-overlapping windows, size on disk, and speed against the dense model."""

from __future__ import annotations

import argparse
from pathlib import Path

from scu import ScuError
from scu.data.text import load_documents
from scu.report.records import atomic_write_json, read_json
from scu.vac.choices import TRUST_HELP


def register(subparsers) -> None:
    p = subparsers.add_parser("eval-ppl", help="perplexity, parameters, disk size and tokens/s of a model", description=__doc__)
    p.add_argument("--model", required=True, help="saved model directory (VAC or dense) or hub id")
    p.add_argument("--data", required=True, help="evaluation text (.txt/.jsonl)")
    p.add_argument("--seq-len", type=int, default=256, help="window length in tokens (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward pass (default: as many as fit in 2,048 tokens, 8 at the default --seq-len)")
    p.add_argument("--baseline", help="dense model to compare speed with (default: the model a VAC directory was made from)")
    p.add_argument("--no-speed", action="store_true", help="skip the prefill/decode timing")
    p.add_argument("--prefill-len", type=int, default=512, help="prompt tokens of the prefill timing (default: %(default)s)")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens generated in the decode timing (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds, median reported (default: %(default)s)")
    p.add_argument("--json", help="write the results as one flat JSON object to this file (default: print only)")
    p.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=run)


def _baseline_path(args: argparse.Namespace) -> str | None:
    if args.baseline:
        return args.baseline
    base = (read_json(Path(args.model) / "config.json") or {}).get("vac_base_model")
    return base if base and Path(base).exists() else None


def run(args: argparse.Namespace) -> int:
    if args.seq_len < 2:
        raise ScuError("--seq-len must be at least 2 tokens")
    if args.batch_size is not None and args.batch_size < 1:
        raise ScuError("--batch-size must be at least 1 window (leave it out for the default)")
    docs = load_documents(args.data)
    import torch
    from scu.vac.evaluate import (
        median_ratio, measure_speed, model_summary, perplexity, predicted_prefill_flop_ratio, token_stream,
    )
    from scu.vac.io import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    model = load_model(args.model, args.trust_remote_code, dtype=torch.float32).eval()
    ids = token_stream(docs, tokenizer)
    row = {"model": args.model, "data": args.data, "seq_len": args.seq_len}
    row |= perplexity(model, ids, args.seq_len, args.batch_size)
    row |= model_summary(model, args.model)
    base_path = _baseline_path(args)
    if not args.no_speed:
        arms = {"model": model}
        if base_path:
            arms["baseline"] = load_model(base_path, args.trust_remote_code, dtype=torch.float32).eval()
        speed = measure_speed(arms, len(tokenizer), args.prefill_len, args.decode_tokens, args.rounds)
        row["prefill_tok_s"], row["decode_tok_s"] = speed["model"]["prefill"], speed["model"]["decode"]
        if base_path:
            base = arms["baseline"]
            row |= {f"baseline_{k}": v for k, v in model_summary(base, base_path).items()}
            row["baseline"] = base_path
            row["baseline_prefill_tok_s"] = speed["baseline"]["prefill"]
            row["baseline_decode_tok_s"] = speed["baseline"]["decode"]
            for k in ("prefill", "decode"):
                row[f"{k}_speedup"] = median_ratio(speed["model"][f"{k}_rounds"], speed["baseline"][f"{k}_rounds"])
            row["predicted_prefill_flop_ratio"] = predicted_prefill_flop_ratio(base, model, args.prefill_len)
    for k, v in row.items():
        print(f"{k:>30}: {v:.4f}" if isinstance(v, float) else f"{k:>30}: {v}")
    if args.json:
        atomic_write_json(args.json, row)
    return 0
