"""`baichuan generate`: not implemented yet."""

from __future__ import annotations

import argparse

HELP = "Generate text from a model folder (issue 4)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("baichuan: this command is not implemented yet")
