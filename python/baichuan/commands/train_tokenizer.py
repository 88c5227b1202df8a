"""`baichuan train-tokenizer`: train a SentencePiece BPE model with Baichuan-7B's recipe.

Argument parsing only; the training is sentencepiece's (``baichuan.tokenizer_training``).
"""

from __future__ import annotations

import argparse
import sys

from baichuan.units import size_arg

HELP = "Train a SentencePiece BPE tokenizer with Baichuan-7B's recipe (sentencepiece's trainer)."


def _symbols(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="text files (one sentence per line), JSONL, .gz/.zst, directories (recursive, sorted) or globs",
    )
    parser.add_argument(
        "--model-prefix",
        "--output",
        dest="model_prefix",
        required=True,
        metavar="PREFIX",
        help="writes PREFIX.model and PREFIX.vocab",
    )
    parser.add_argument("--vocab-size", type=int, default=64000, help="vocabulary size (Baichuan-7B: 64000)")
    parser.add_argument(
        "--character-coverage",
        type=float,
        default=1.0,
        help="share of characters covered by pieces (Baichuan-7B: 1.0; lower it for a small vocabulary: "
        "the rest is spelled with byte pieces)",
    )
    parser.add_argument(
        "--input-sentence-size",
        type=size_arg,
        default=10_000_000,
        help="sample at most this many sentences (lines) uniformly from the inputs, e.g. 2000000 or 500K "
        "(K, M, G: powers of 1024, as tokenize --shard-size; KB, MB, GB: powers of 1000); "
        "Baichuan-7B: 10000000",
    )
    parser.add_argument(
        "--symbols",
        choices=["baichuan", "none"],
        default="baichuan",
        help="preset of user-defined symbols: Baichuan-7B's markup, digits and CJK punctuation, or none",
    )
    parser.add_argument("--reserved", type=int, default=300, help="number of <reserved_i> symbols (Baichuan-7B: 300)")
    parser.add_argument(
        "--user-defined-symbols",
        type=_symbols,
        default=[],
        metavar="A,B,...",
        help="more user-defined symbols, after the preset and before the reserved ones",
    )
    parser.add_argument("--control-symbols", type=_symbols, default=[], metavar="A,B,...", help="control symbols")
    parser.add_argument("--max-sentencepiece-length", type=int, default=10)
    parser.add_argument("--max-sentence-length", type=int, default=8192, help="longer lines (bytes) are skipped")
    parser.add_argument("--split-digits", action="store_true", help="split numbers into digits (Baichuan-7B: off)")
    parser.add_argument("--no-byte-fallback", action="store_true", help="map unknown characters to <unk>")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text")
    parser.add_argument("--num-threads", type=int, default=0, help="trainer threads (default: one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sentencepiece's sampling")
    parser.add_argument("--verbose", action="store_true", help="show sentencepiece's training log")


def run(args: argparse.Namespace) -> int:
    from baichuan.errors import BaichuanError
    from baichuan.tokenizer_training import (
        BAICHUAN_SYMBOLS,
        TrainTokenizerConfig,
        reserved_symbols,
        train_tokenizer,
    )

    symbols = list(BAICHUAN_SYMBOLS) if args.symbols == "baichuan" else []
    symbols += [s for s in args.user_defined_symbols if s not in symbols]
    symbols += reserved_symbols(args.reserved)
    cfg = TrainTokenizerConfig(
        inputs=list(args.input),
        model_prefix=args.model_prefix,
        vocab_size=args.vocab_size,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        user_defined_symbols=symbols,
        control_symbols=list(args.control_symbols),
        max_sentencepiece_length=args.max_sentencepiece_length,
        max_sentence_length=args.max_sentence_length,
        split_digits=args.split_digits,
        byte_fallback=not args.no_byte_fallback,
        text_field=args.text_field,
        num_threads=args.num_threads,
        seed=args.seed,
    )
    try:
        import sentencepiece as spm
    except ImportError:
        print(
            "baichuan train-tokenizer: needs sentencepiece's trainer: pip install 'baichuan-stack[train]' "
            "(or pip install sentencepiece)",
            file=sys.stderr,
        )
        return 1
    if not args.verbose:
        spm.set_min_log_level(2)
    try:
        result = train_tokenizer(cfg)
    except (BaichuanError, OSError, ValueError, RuntimeError) as e:
        print(f"baichuan train-tokenizer: error: {e}", file=sys.stderr)
        return 1
    print(
        f"trained a {result.vocab_size}-piece BPE model on {result.sentences} sentences: "
        f"{result.model_path} ({result.vocab_path})"
    )
    return 0
