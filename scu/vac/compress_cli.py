"""`scu compress`: factorize a causal LM's linear layers to a parameter ratio, recover, and save it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scu import ScuError
from scu.vac.choices import METHODS, MODES, ORDERS, TRUST_HELP


def register(subparsers) -> None:
    p = subparsers.add_parser("compress", help="low-rank compression of a causal LM (VAC)", description=__doc__)
    p.add_argument("--model", required=True, help="dense model: hub id or saved directory")
    p.add_argument("--method", choices=METHODS, default="vac", help="how each matrix is factorized (default: %(default)s)")
    p.add_argument("--ratio", type=float, required=True, help="dense / compressed parameters over the linear layers, e.g. 1.8")
    p.add_argument("--calib", required=True, help="calibration text (.txt/.jsonl); must not contain --eval documents")
    p.add_argument("--eval", help="evaluation text: checked disjoint from --calib, and perplexity reported on it "
                   "(default: none, no perplexity)")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--order", choices=ORDERS, default="front", help="order in which layers are compressed (default: %(default)s)")
    p.add_argument("--fisher-exponent", type=float, default=1 / 3,
                   help="exponent of the Fisher weights in fwsvd/vac (default: %(default).3g)")
    p.add_argument("--refit", action="store_true",
                   help="whiten: after truncation, update the up factor in closed form (least squares) toward the "
                   "dense model's outputs; helped on a small base, hurt on SmolLM2 (docs/vac.md)")
    p.add_argument("--attn-floor", type=float, default=0.0,
                   help="minimum rank of attention matrices, fraction of full rank (default: %(default)s)")
    p.add_argument("--mlp-floor", type=float, default=0.0,
                   help="minimum rank of MLP matrices, fraction of full rank (default: %(default)s)")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration sequences for profiling (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=256, help="calibration sequence length in tokens (default: %(default)s)")
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="calibration documents held out for --search fitness (default: %(default)s)")
    p.add_argument("--recover", choices=MODES, default="none",
                   help="after compressing, distil the dense model back in (default: %(default)s)")
    p.add_argument("--recover-steps", type=int, default=300, help="recovery optimizer steps (default: %(default)s)")
    p.add_argument("--recover-lr", type=float, default=3e-5, help="recovery learning rate (default: %(default)s)")
    p.add_argument("--attn-lr-mult", type=float, default=10.0,
                   help="recovery learning-rate multiplier of attention factors (default: %(default)s)")
    p.add_argument("--nll-weight", type=float, default=0.0,
                   help="weight of the NLL term next to the KL (docs/vac.md) (default: %(default)s)")
    p.add_argument("--recover-batch-size", type=int, default=8, help="recovery sequences per step (default: %(default)s)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank of --recover lora (default: %(default)s)")
    p.add_argument("--search", action="store_true", help="evolutionary search over order, Fisher exponent, allocation")
    p.add_argument("--budget", type=int, default=12, help="search budget in candidate evaluations (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="search candidates compressed at once, in threads; each holds a copy of the model "
                   "(2 on a 2-core CPU: docs/vac.md) (default: %(default)s)")
    p.add_argument("--int8", action="store_true", help="store the factors as int8 with per-channel scales")
    p.add_argument("--save-dtype", choices=["float32", "bfloat16", "float16"],
                   help="store the floating-point weights in this dtype, e.g. bfloat16 next to --int8 factors "
                   "(default: as computed, float32)")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default: %(default)s)")
    p.add_argument("--eval-seq-len", type=int, default=None, help="eval window length (default: --seq-len)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration split and sampling, recovery and search (default: %(default)s)")
    p.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from scu.data.text import load_documents
    from scu.vac.compress import CompressSpec, compress
    from scu.vac.data import blocks, calibration_split, check_disjoint
    from scu.vac.evaluate import perplexity, token_stream
    from scu.vac.io import cast_floats, check_output_dir, load_model, load_tokenizer, quantize_int8, save_compressed
    from scu.vac.recover import RecoverSpec, kept_row, recover

    spec = CompressSpec(args.method, args.ratio, args.order, args.fisher_exponent, args.attn_floor, args.mlp_floor,
                        refit=args.refit)
    spec.validate()
    rspec = RecoverSpec(args.recover, args.recover_steps, args.recover_lr, args.attn_lr_mult, args.nll_weight,
                        args.recover_batch_size, args.lora_rank, args.seed)
    rspec.validate()
    if args.search and args.method != "vac":
        raise ScuError("--search tunes VAC's allocation; use it with --method vac")
    if args.workers < 1:
        raise ScuError(f"--workers must be at least 1 (got {args.workers})")
    out = check_output_dir(args.out)
    calib_docs = load_documents(args.calib)
    eval_docs = load_documents(args.eval) if args.eval else None
    if eval_docs is not None:
        check_disjoint(calib_docs, eval_docs, args.calib, args.eval)
    profile_docs, heldout_docs = calibration_split(calib_docs, args.heldout_fraction, args.seed)

    start = time.time()
    tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    make_model = lambda: load_model(args.model, args.trust_remote_code, dtype=torch.float32)  # noqa: E731
    calib = blocks(profile_docs, tokenizer, args.seq_len, args.calib_samples, args.seed)
    heldout = blocks(heldout_docs, tokenizer, args.seq_len, args.calib_samples, args.seed)
    report: dict = {"model": args.model, "calib": args.calib, "eval": args.eval, "calib_blocks": len(calib),
                    "heldout_blocks": len(heldout), "seq_len": args.seq_len}
    if args.search:
        from scu.vac.search import evolve

        model, best, history = evolve(make_model, calib, heldout, spec, args.budget, seed=args.seed, workers=args.workers)
        spec, result = best.spec, best.result
        report["search"] = [c.to_json() for c in history]
    else:
        model = make_model()
        result = compress(model, calib, spec, verbose=True)
    report["spec"] = {**vars(spec)}
    report["result"] = result.to_json()
    print(f"compressed: linear ratio {result.linear_ratio:.4f} (target {spec.ratio}), whole model {result.model_ratio:.4f}",
          file=sys.stderr)
    if rspec.mode != "none":
        recover_blocks = blocks(profile_docs, tokenizer, args.seq_len, None, args.seed)
        model, history = recover(model, make_model(), recover_blocks, rspec, heldout=heldout if len(heldout) else None,
                                 verbose=True)
        chosen = kept_row(history)
        report["recover"] = {**vars(rspec), "final": history[-1], "selected": chosen}
        if "heldout_kl" in chosen:
            print(f"recovery: kept step {chosen['step']} of {rspec.steps} (held-out KL {chosen['heldout_kl']:.5f}, "
                  f"{history[0]['heldout_kl']:.5f} before)", file=sys.stderr)
    if args.int8:
        quantize_int8(model)
    report["int8"] = args.int8
    if eval_docs is not None:
        ids = token_stream(eval_docs, tokenizer)
        seq = args.eval_seq_len or args.seq_len
        report["eval_ppl"] = perplexity(model, ids, seq)
        report["eval_ppl_dense"] = perplexity(make_model(), ids, seq)
        print(f"eval ppl {report['eval_ppl']['ppl']:.3f} (dense {report['eval_ppl_dense']['ppl']:.3f})", file=sys.stderr)
    report["seconds"] = time.time() - start
    base = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    if args.save_dtype:  # in place: the model is not used after this, and a cast copy would double its memory
        cast_floats(model, getattr(torch, args.save_dtype))
    save_compressed(model, tokenizer, out, report, base, args.max_shard_size)
    print(out)
    return 0

