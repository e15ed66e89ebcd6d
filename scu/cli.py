"""The `scu` command line. Each subcommand lives in its own module and registers itself here.

A module in COMMANDS exposes `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scu import ScuError, __version__

COMMANDS = [
    "scu.demo",
    "scu.torch.train_cli",
    "scu.config.suggest_cli",
    "scu.mlx.export_cli",
    "scu.data.cli",
    "scu.vac.compress_cli",
    "scu.vac.eval_ppl_cli",
    "scu.eval.cli",
    "scu.report.plots",
    "scu.report.validate",
    "scu.report.doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scu", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"scu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ScuError as e:
        print(f"scu {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
