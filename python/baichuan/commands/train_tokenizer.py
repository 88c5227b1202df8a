"""`baichuan train-tokenizer`: not implemented yet."""

from __future__ import annotations

import argparse

HELP = "Train a SentencePiece BPE tokenizer with Baichuan-7B's recipe (issue 3)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("baichuan: this command is not implemented yet")
