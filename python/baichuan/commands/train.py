"""`baichuan train`: not implemented yet."""

from __future__ import annotations

import argparse

HELP = "Pre-train a Baichuan model with DeepSpeed (issue 5)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("baichuan: this command is not implemented yet")
