"""`scu export ADAPTER_DIR --to mlx|peft --out DIR`: move a LoRA adapter between PEFT and mlx-lm."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="convert a LoRA adapter between PEFT and mlx-lm formats",
        description=(
            "Convert a LoRA adapter between PEFT (adapter_model.safetensors) and mlx-lm (adapters.safetensors). "
            "The source format is detected. The run record (metadata.json, metrics.jsonl) is copied along."
        ),
    )
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="directory of the adapter to convert")
    p.add_argument("--to", required=True, choices=["mlx", "peft"], help="target format")
    p.add_argument("--out", required=True, metavar="DIR", help="new directory for the converted adapter")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scu.mlx.convert import export_adapter

    out = export_adapter(args.adapter_dir, args.to, args.out)
    usage = (
        f"mlx_lm.load(BASE_MODEL, adapter_path={str(out)!r})"
        if args.to == "mlx"
        else f"PeftModel.from_pretrained(base_model, {str(out)!r})"
    )
    print(f"wrote {args.to} adapter to {out}; load it with {usage}")
    return 0
