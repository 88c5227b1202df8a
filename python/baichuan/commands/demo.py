"""`baichuan demo`: not implemented yet."""

from __future__ import annotations

import argparse

HELP = "Run the main job on the embedded default."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("baichuan: this command is not implemented yet")
