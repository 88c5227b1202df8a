"""The ``baichuan`` command line: argument parsing only.

Each subcommand lives in ``baichuan.commands.<module>``, which exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy dependencies
(torch, deepspeed) inside ``run`` so that ``baichuan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name -> module under baichuan.commands
COMMANDS: dict[str, str] = {
    "encode": "encode",
    "tokenize": "tokenize",
    "train-tokenizer": "train_tokenizer",
    "train": "train",
    "generate": "generate",
    "export-hf": "export_hf",
    "eval": "evaluate",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baichuan",
        description="Baichuan-7B stack: tokenizer, bulk tokenization, training, export, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"baichuan.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
