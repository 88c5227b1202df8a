"""`baichuan train-tokenizer`: train a SentencePiece BPE model with Baichuan-7B's recipe.

Argument parsing only; the training is sentencepiece's (``baichuan.tokenizer_training``).
"""

from __future__ import annotations

import argparse

from baichuan.cli_fields import add_dataclass_arguments, dataclass_from_args

HELP = "Train a SentencePiece BPE tokenizer with Baichuan-7B's recipe (sentencepiece's trainer)."


# The TrainTokenizerConfig fields with a flag, in --help's order (defaults, types and help from the
# dataclass); user_defined_symbols is made of --symbols, --user-defined-symbols and --reserved.
FLAGS = ["inputs", "model_prefix", "vocab_size", "character_coverage", "input_sentence_size"]
MORE_FLAGS = ["control_symbols", "max_sentencepiece_length", "max_sentence_length", "split_digits", "byte_fallback",
              "text_field", "num_threads", "seed"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from baichuan.tokenizer_training import BAICHUAN_RESERVED, TrainTokenizerConfig, symbol_list

    add_dataclass_arguments(parser, TrainTokenizerConfig, FLAGS)
    parser.add_argument(
        "--symbols",
        choices=["baichuan", "none"],
        default="baichuan",
        help="preset of user-defined symbols: Baichuan-7B's markup, digits and CJK punctuation, or none",
    )
    parser.add_argument("--reserved", type=int, default=BAICHUAN_RESERVED,
                        help=f"number of <reserved_i> symbols (Baichuan-7B: {BAICHUAN_RESERVED})")
    parser.add_argument(
        "--user-defined-symbols",
        type=symbol_list,
        default=[],
        metavar="A,B,...",
        help="more user-defined symbols, after the preset and before the reserved ones",
    )
    add_dataclass_arguments(parser, TrainTokenizerConfig, MORE_FLAGS)
    parser.add_argument("--verbose", action="store_true", help="show sentencepiece's training log")


def run(args: argparse.Namespace) -> int:
    from baichuan.errors import BaichuanError, as_user_error
    from baichuan.tokenizer_training import (
        BAICHUAN_SYMBOLS,
        TrainTokenizerConfig,
        reserved_symbols,
        train_tokenizer,
    )

    symbols = list(BAICHUAN_SYMBOLS) if args.symbols == "baichuan" else []
    symbols += [s for s in args.user_defined_symbols if s not in symbols]
    symbols += reserved_symbols(args.reserved)
    cfg = dataclass_from_args(args, TrainTokenizerConfig, fields=FLAGS + MORE_FLAGS, user_defined_symbols=symbols)
    try:
        import sentencepiece as spm
    except ImportError:
        raise BaichuanError(
            "needs sentencepiece's trainer: pip install 'baichuan-stack[train]' (or pip install sentencepiece)"
        ) from None
    if not args.verbose:
        spm.set_min_log_level(2)
    with as_user_error(ValueError, RuntimeError):  # sentencepiece's trainer raises both for bad input
        result = train_tokenizer(cfg)
    print(
        f"trained a {result.vocab_size}-piece BPE model on {result.sentences} sentences: "
        f"{result.model_path} ({result.vocab_path})"
    )
    return 0
