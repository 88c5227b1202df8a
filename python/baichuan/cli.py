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
    "merge-shards": "merge_shards",
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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, not our bug: printed as one line, no traceback."""
    from baichuan.errors import BaichuanError
    from baichuan.tokenizer import TokenizerError

    errors: list[type[BaseException]] = [BaichuanError, TokenizerError, OSError]
    try:
        from baichuan._tokenizer import CorpusError  # type: ignore[attr-defined]

        errors.append(CorpusError)
    except ImportError:
        pass
    return tuple(errors)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    # the Rust corpus job's option errors say where they came from; the command line names the flag
    return (str(e) or type(e).__name__).removeprefix("invalid corpus options: ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"baichuan {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        print(f"baichuan {args.command}: error: {_message(e)}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    raise SystemExit(main())
