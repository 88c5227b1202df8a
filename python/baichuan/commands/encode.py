"""`baichuan encode`: encode text with a SentencePiece model and print ids and pieces."""

from __future__ import annotations

import argparse

HELP = "Encode text with a SentencePiece .model file and print ids and pieces."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="path to a SentencePiece .model file")
    parser.add_argument("text", nargs="+", help="text to encode (several arguments are joined by spaces)")


def run(args: argparse.Namespace) -> int:
    from baichuan import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    text = " ".join(args.text)
    ids = tok.encode(text)
    pieces = tok.encode_as_pieces(text)
    print(f"ids:    {ids}")
    print(f"pieces: {pieces}")
    print(f"decode: {tok.decode(ids)!r}")
    return 0
