"""`baichuan tokenize`: tokenize a corpus into memory-mapped token shards (or a Megatron pair).

Argument parsing only; the job runs in Rust threads (``baichuan.corpus``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from baichuan.cli_fields import add_dataclass_arguments, dataclass_from_args

HELP = "Tokenize a corpus into memory-mapped token shards, in parallel, resumably."


# The TokenizeConfig fields with a flag, in --help's order; their defaults, types and help are the
# dataclass's. chunk_bytes has no flag; holdout_per_million is --holdout FRACTION (below).
FLAGS = ["tokenizer", "inputs", "output", "workers", "min_tokens", "append_eos", "doc_per", "input_format",
         "text_field", "format", "shard_tokens", "invalid_utf8", "strip", "skip_bad_files", "resume", "overwrite",
         "max_doc_bytes", "megatron_prefix", "partition"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # `--partition -1/2` reaches our check (one line naming it) instead of argparse's "expected one
    # argument": a "-digits/digits" word is a value here, as "-5" is for argparse already.
    matcher = getattr(parser, "_negative_number_matcher", None)
    if matcher is not None:
        parser._negative_number_matcher = re.compile(matcher.pattern + r"|^-\d+/\d+$")  # type: ignore[attr-defined]
    from baichuan.tokenize_config import TokenizeConfig

    add_dataclass_arguments(parser, TokenizeConfig, FLAGS)
    # Testing aid: SIGKILL this process right after its Nth checkpoint (exact kill points for resume tests).
    parser.add_argument("--debug-kill-after-checkpoints", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--holdout",
        metavar="FRACTION",
        help="hold out this fraction of the documents (e.g. 0.001; chosen by a fixed hash of the file name "
        "and the document's position, in steps of 1e-6) into OUT_DIR/holdout/, a shard directory of its own; "
        "they never appear in the training shards",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line and no summary table")


def _holdout_per_million(text: str) -> int:
    """``--holdout`` as documents per million; raises ValueError with the reason."""
    from decimal import Decimal, InvalidOperation

    try:
        f = Decimal(text)
    except InvalidOperation:
        raise ValueError("expected a fraction such as 0.001") from None
    if not f.is_finite() or f <= 0 or f >= 1:
        raise ValueError("must be above 0 and below 1 (a fraction of the documents, e.g. 0.001)")
    ppm = f * 1_000_000
    if ppm != ppm.to_integral_value():
        raise ValueError("is kept in steps of 0.000001 (one document per million); round it")
    return int(ppm)


def run(args: argparse.Namespace) -> int:
    from baichuan.corpus import TokenizeConfig, run_tokenize, summary_table
    from baichuan.errors import BaichuanError

    if args.workers < 0:
        raise BaichuanError("--workers must be >= 0 (0 = one per core)")
    if args.min_tokens < 0:
        raise BaichuanError("--min-tokens must be >= 0")
    if args.partition is not None:
        from baichuan._tokenizer import parse_partition  # type: ignore[attr-defined]

        parse_partition(args.partition)  # a CorpusError names the problem; baichuan.cli prints it
        if args.format == "megatron":
            raise BaichuanError(f"--partition {args.partition}: works with the shard format only "
                                "(merge-shards cannot join Megatron pairs)")
    holdout = 0
    if args.holdout is not None:
        try:
            holdout = _holdout_per_million(args.holdout)
        except ValueError as e:
            raise BaichuanError(f"--holdout {args.holdout}: {e}") from None
    cfg = dataclass_from_args(
        args, TokenizeConfig, fields=FLAGS, holdout_per_million=holdout,
        extra={"debug_kill_after_checkpoints": args.debug_kill_after_checkpoints}
        if args.debug_kill_after_checkpoints > 0 else {},
    )
    try:  # TokenizerError/CorpusError and OSError: printed by baichuan.cli as one line
        manifest = run_tokenize(cfg, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"baichuan tokenize: interrupted; continue with --resume (output: {args.output})", file=sys.stderr)
        return 130
    if not args.quiet:
        print(summary_table(manifest))
        print(f"manifest: {os.path.join(args.output, 'manifest.json')}")
    return 0
