"""`baichuan eval`: not implemented yet."""

from __future__ import annotations

import argparse

HELP = "5-shot evaluation: C-Eval, MMLU, CMMLU, Gaokao, AGIEval (issue 6)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("baichuan: this command is not implemented yet")
