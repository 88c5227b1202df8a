"""`baichuan export-hf`: not implemented yet."""

from __future__ import annotations

import argparse

HELP = "Export a checkpoint to a Hugging Face transformers folder (issue 4)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("baichuan: this command is not implemented yet")
