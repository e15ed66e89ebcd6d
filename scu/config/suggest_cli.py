"""`scu suggest`: apply the scaling guide's rules to a model and a dataset and write a config for `scu train`."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from scu import ScuError
from scu.config.schema import dump_config
from scu.config.smart import MAX_EPOCHS, SYMPTOM_FACTORS, TASK_ADJUSTMENTS, Suggestion, suggest
from scu.report.records import atomic_write_text

SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str) -> float:
    """A count like 1200000000, 1.2e9, 1.2B, 50M or 500k."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 1.2e9, 1.2B, 50M, 500k)")
    return float(m.group(1)) * SUFFIXES[m.group(2)]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "suggest",
        help="suggest an SCU config (S*, LoRA, PI gains, batch) for a model and dataset",
        description="Apply the scaling guide's rules to a model and a dataset; print one line per rule "
        "and write a YAML that `scu train --config` accepts. See docs/smart_config.md.",
    )
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--model", help="local model directory or hub id (only its config.json is read)")
    size.add_argument("--params", type=parse_count, help="parameter count instead of a model, e.g. 1.2B")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--tokens", type=parse_count, help="training tokens, e.g. 50M (default: unknown; the guide's template steps)")
    data.add_argument("--data", help="training data (.txt, .jsonl, datasets dir); tokens counted with the model's tokenizer "
                      "(default: none; set data.train_data in the written config)")
    p.add_argument("--task", choices=list(TASK_ADJUSTMENTS), default="general",
                   help="the guide's task adjustment of S*, with --target guide (default: %(default)s)")
    p.add_argument("--target", choices=["measured", "auto", "guide"], default="measured",
                   help="measured: one PI run at the engine's S* 5%%; auto: lambda 1 under the prior scale of a plain fit, "
                   "which `scu train` runs first (two fits, no validation data); guide: the scaling guide's size table "
                   "with its dataset and task adjustments. auto and guide print their measured costs. A registered "
                   "--family's S* is used whichever is chosen (default: %(default)s)")
    p.add_argument("--vram", type=float, metavar="GB",
                   help="GPU memory in GB: sizes batch and weight format, warns above it (default: none, the guide's smallest batch)")
    p.add_argument("--block-size", type=int, help="tokens per sequence (default: 2048, capped by the model's context)")
    p.add_argument("--epochs", type=float, default=MAX_EPOCHS, metavar="E",
                   help=f"most passes over the data the planned steps may make (default: {MAX_EPOCHS:g})")
    p.add_argument("--cpu-minutes", type=float, metavar="M",
                   help="without --vram: plan at most this many minutes of training on one CPU thread "
                   "(default: none; the estimate is printed)")
    p.add_argument("--family", help="use this registered model family (default: the one whose patterns match --model)")
    p.add_argument("--scales", help="YAML file of model families (default: $SCU_SCALES or ~/.config/scu/scales.yaml)")
    p.add_argument("--symptom", action="append", default=[], choices=list(SYMPTOM_FACTORS),
                   help="seen in an earlier run: apply the guide's troubleshooting to the PI gains (repeatable; default: none)")
    p.add_argument("--text-field", default="text", help="JSONL/datasets column with the text (default: text)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own config/modeling code")
    p.add_argument("--out", help="write the YAML here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def render(s: Suggestion) -> str:
    """The YAML with the reasoning as a comment header, so the file says where its numbers came from."""
    header = ["# written by `scu suggest`; one line per rule applied:"]
    header += [f"#   {line}" for line in s.reasons]
    header += [f"#   warning: {w}" for w in s.warnings]
    return "\n".join(header) + "\n" + dump_config(s.config)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and (out.is_dir() or not args.force):
        raise ScuError(f"{out} already exists; choose another --out or pass --force to overwrite it")
    s = suggest(
        args.model,
        params=args.params,
        tokens=args.tokens,
        data=args.data,
        task=args.task,
        vram_gb=args.vram,
        block_size=args.block_size,
        family=args.family,
        symptoms=args.symptom,
        scales_file=args.scales,
        text_field=args.text_field,
        trust_remote_code=args.trust_remote_code,
        epochs=args.epochs,
        cpu_minutes=args.cpu_minutes,
        target=args.target,
    )
    for w in s.warnings:
        print(f"warning: {w}", file=sys.stderr)
    text = render(s)
    if out is None:  # the YAML carries the reasoning as comments
        print(text, end="")
    else:
        for line in s.reasons:
            print(f"- {line}")
        atomic_write_text(out, text)
        print(f"wrote {out} (train with: scu train --config {out})")
    return 0
