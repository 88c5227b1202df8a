"""`baichuan tokenize`: not implemented yet."""

from __future__ import annotations

import argparse

HELP = "Tokenize a corpus into memory-mapped token shards (issue 3)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("baichuan: this command is not implemented yet")
