"""`scu eval`: held-out BPT and perplexity of a base model and its LoRA adapters, side by side.

    scu eval --model ID_OR_PATH [--adapter DIR ...] --data P [--block-size N] [--stride N]
             [--json OUT] [--probes [FILE]] [--probes-out OUT.md]

Every input is checked before a model is loaded. The base model is loaded once; the adapters are
attached to it with PEFT and switched in turn. For each adapter directory that is a `scu train`
run, the results go into its eval_results.json and its model card (README.md) is re-rendered; other
adapter directories are left alone, with a note.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scu import ScuError
from scu.report.records import atomic_write_json, atomic_write_text, check_safetensors, read_json

BASE = "base"


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="held-out BPT and perplexity of a base model and its adapters, side by side")
    p.add_argument("--model", required=True, help="base model: hub id or local directory")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="PEFT adapter directory (repeatable; default: none, the base model alone)")
    p.add_argument("--data", required=True, help="held-out text: .txt (blank-line separated documents), .jsonl, datasets dir")
    p.add_argument("--text-field", default="text", help="JSONL/datasets column with the text (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=512, help="window length in tokens (default: %(default)s)")
    p.add_argument("--stride", type=int, help="window start spacing; below --block-size: sliding window (default: block size)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: %(default)s)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="weights dtype of the base model (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of the documents (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--json", metavar="OUT", help="write the results to this JSON file (default: print only)")
    p.add_argument(
        "--probes", nargs="?", const="", metavar="FILE",
        help="generate probe prompts with every model into a Markdown report; without FILE: the default probes "
        "(math, logic riddle, SQL, knowledge, creative writing) (default: no probes)",
    )
    p.add_argument("--probes-out", default="probes.md", metavar="OUT.md", help="where the probe report goes (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens generated per probe (default: %(default)s)")
    p.add_argument("--no-card", action="store_true", help="leave the adapters' eval_results.json and README.md alone")
    p.set_defaults(func=run)


def adapter_names(dirs: list[str]) -> list[str]:
    """Short, unique display names: the directory name, or the path as given when names repeat."""
    names = [Path(d).name or d for d in dirs]
    return [n if names.count(n) == 1 and n != BASE else d for n, d in zip(names, dirs)]


def adapter_keys(dirs: list[str]) -> list[str]:
    """The names the adapters get inside PEFT, which become module names: no '.' or '/' as a directory name may hold."""
    return [f"adapter{i}" for i in range(len(dirs))]


def check_adapter(d: str, model: str) -> None:
    from scu.report.card import PEFT_WEIGHTS, adapter_format

    path = Path(d)
    if not path.is_dir():
        raise ScuError(f"adapter directory not found: {d}")
    fmt = adapter_format(path)
    if fmt == "mlx":
        raise ScuError(f"{d} holds an mlx-lm adapter; convert it with `scu export {d} --to peft --out DIR` and evaluate DIR")
    if fmt is None or not (path / "adapter_config.json").exists():
        raise ScuError(f"{d} is not a PEFT adapter (no adapter_config.json / adapter_model.safetensors)")
    if (path / PEFT_WEIGHTS).exists():
        check_safetensors(path / PEFT_WEIGHTS)
    trained_on = (read_json(path / "adapter_config.json") or {}).get("base_model_name_or_path")
    if trained_on and trained_on != model:
        print(f"scu eval: note: {d} was trained on {trained_on!r}, evaluating it on {model!r}", file=sys.stderr)


def check_args(args: argparse.Namespace) -> None:
    from scu.vac.io import check_model_dir

    if args.block_size < 2:
        raise ScuError("--block-size must be at least 2 tokens")
    if args.stride is not None and not 1 <= args.stride <= args.block_size:
        raise ScuError(f"--stride must be between 1 and --block-size ({args.block_size})")
    if args.bootstrap < 10:
        raise ScuError("--bootstrap needs at least 10 resamples")
    check_model_dir(args.model)
    for d in args.adapter:
        check_adapter(d, args.model)


def evaluate(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Any]:
    """Score every model; returns (results, the PEFT/base model, tokenizer) for the probes."""
    from scu.config.schema import ModelSection
    from scu.data.text import load_documents, tokenize_documents
    from scu.eval.heldout import bootstrap_bpt, interval, score_documents
    from scu.torch.model import load_model, load_tokenizer

    model_cfg = ModelSection(base_model=args.model, dtype=args.dtype)
    tokenizer = load_tokenizer(model_cfg)
    docs = load_documents(args.data, args.text_field, tokenizer)
    ids = [d for d in tokenize_documents(docs, tokenizer) if len(d) >= 2]
    if not ids:
        raise ScuError(f"{args.data} has no document of two or more tokens; nothing to score")
    model = load_model(model_cfg)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and args.block_size > max_pos:
        raise ScuError(f"--block-size {args.block_size} exceeds the model's context of {max_pos} tokens; lower it")
    names = adapter_names(args.adapter)
    model = attach_adapters(model, args.adapter, args.model)
    model.eval()
    stride = args.stride or args.block_size
    scores = {}
    for name, key in zip([BASE, *names], [BASE, *adapter_keys(args.adapter)]):
        with active(model, key):
            scores[name] = score_documents(model, ids, args.block_size, stride, args.batch_size)
    boot = bootstrap_bpt(scores, args.bootstrap, args.seed)
    level = 0.95
    rows = []
    for name, path in zip([BASE, *names], [args.model, *args.adapter]):
        s = scores[name]
        lo, hi = interval(boot[name], level)
        delta = None if name == BASE else s.bpt - scores[BASE].bpt
        rows.append({
            "name": name, "path": path, "bpt": s.bpt, "bpt_ci": [lo, hi], "perplexity": s.perplexity,
            "perplexity_ci": [2.0**lo, 2.0**hi], "delta_bpt": delta,
            "delta_ci": None if delta is None else list(interval(boot[name] - boot[BASE], level)),
        })
    results = {
        "model": args.model, "data": args.data, "documents": len(ids), "tokens": int(scores[BASE].tokens.sum()),
        "block_size": args.block_size, "stride": stride,
        "bootstrap": {"samples": args.bootstrap, "seed": args.seed, "level": level},
        "results": rows, "ranking": [r["name"] for r in sorted(rows, key=lambda r: r["bpt"])],
    }
    return results, model, tokenizer


def attach_adapters(model: Any, dirs: list[str], base: str) -> Any:
    """`model` with every adapter in `dirs` loaded under its `adapter_keys` name (the model itself when there are none)."""
    from peft import PeftModel

    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        for i, (key, d) in enumerate(zip(adapter_keys(dirs), dirs)):
            try:
                if i == 0:
                    model = PeftModel.from_pretrained(model, d, adapter_name=key)
                else:
                    model.load_adapter(d, adapter_name=key)
            except RuntimeError as e:
                if "size mismatch" not in str(e):
                    raise
                raise ScuError(f"adapter {d} does not fit this base model {base} (its tensor shapes differ); "
                               "evaluate it with the base model it was trained on") from None
    return model


@contextmanager
def active(model: Any, key: str) -> Iterator[Any]:
    """The base model (adapters disabled) or the adapter loaded as `key`, for the duration of the block."""
    if not hasattr(model, "disable_adapter"):  # no adapter loaded: the model is the base
        yield model
    elif key == BASE:
        with model.disable_adapter():
            yield model
    else:
        model.set_adapter(key)
        yield model


def table(results: dict[str, Any]) -> str:
    level = round(100 * results["bootstrap"]["level"])
    head = f"{'model':<24} {'BPT':>8} {f'{level}% CI':>19} {'perplexity':>11} {'ΔBPT':>9} {f'{level}% CI':>21}"
    lines = [
        f"{results['documents']:,} documents, {results['tokens']:,} scored tokens, block {results['block_size']}, "
        f"stride {results['stride']}",
        head,
    ]
    for r in results["results"]:
        ci = f"[{r['bpt_ci'][0]:.4f}, {r['bpt_ci'][1]:.4f}]"
        delta = "" if r["delta_bpt"] is None else f"{r['delta_bpt']:+.4f}"
        dci = "" if r["delta_ci"] is None else f"[{r['delta_ci'][0]:+.4f}, {r['delta_ci'][1]:+.4f}]"
        lines.append(f"{r['name'][:24]:<24} {r['bpt']:>8.4f} {ci:>19} {r['perplexity']:>11.2f} {delta:>9} {dci:>21}")
    lines.append("best first: " + " < ".join(results["ranking"]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from scu.eval.probes import load_probes

    check_args(args)
    probes = load_probes(args.probes or None) if args.probes is not None else None
    results, model, tokenizer = evaluate(args)
    print(table(results))
    if args.json:
        atomic_write_json(args.json, results)
        print(f"results: {args.json}")
    if not args.no_card:
        update_cards(args.adapter, results)
    if probes is not None:
        from scu.eval.probes import generate, probe_report

        names = [BASE, *adapter_names(args.adapter)]

        def arm(key: str):
            def go(prompt: str) -> str:
                with active(model, key):
                    return generate(model, tokenizer, prompt, args.max_new_tokens)
            return go

        arms = [(n, arm(k)) for n, k in zip(names, [BASE, *adapter_keys(args.adapter)])]
        report = probe_report(probes, arms, f"Probes: {args.model}", args.max_new_tokens)
        atomic_write_text(args.probes_out, report)
        print(f"probes: {args.probes_out}")
    return 0


def update_cards(adapter_dirs: list[str], results: dict[str, Any]) -> None:
    """eval_results.json and a re-rendered README.md in each adapter directory that is a `scu train` run; any other
    directory is left alone, with a one-line note (its card would otherwise state facts its records do not hold)."""
    from scu.report.card import add_eval_results

    for d, name in zip(adapter_dirs, adapter_names(adapter_dirs)):
        try:
            add_eval_results(d, results, name)
        except ScuError as e:
            print(f"scu eval: note: {e}; its README.md is left alone (--json keeps the results)", file=sys.stderr)
