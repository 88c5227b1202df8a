"""`baichuan tokenize`: tokenize a corpus into memory-mapped token shards (or a Megatron pair).

Argument parsing only; the job runs in Rust threads (``baichuan.corpus``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from baichuan.units import size_arg

HELP = "Tokenize a corpus into memory-mapped token shards, in parallel, resumably."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # `--partition -1/2` reaches our check (one line naming it) instead of argparse's "expected one
    # argument": a "-digits/digits" word is a value here, as "-5" is for argparse already.
    matcher = getattr(parser, "_negative_number_matcher", None)
    if matcher is not None:
        parser._negative_number_matcher = re.compile(matcher.pattern + r"|^-\d+/\d+$")  # type: ignore[attr-defined]
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model file")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="files, directories (read recursively, sorted; hidden entries skipped) or glob patterns; "
        ".gz and .zst are decompressed; our own outputs found there (earlier tokenize output folders, "
        "token .bin/.idx files, OUT_DIR) are left out with a warning",
    )
    parser.add_argument("--output", required=True, metavar="OUT_DIR", help="output directory")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="encoding threads (default: one per core)"
    )
    parser.add_argument(
        "--min-tokens",
        type=int,
        default=20,
        help="drop documents shorter than this, counting the EOS when appended (upstream: 20)",
    )
    parser.add_argument("--no-eos", action="store_true", help="do not append the EOS id to each document")
    parser.add_argument(
        "--doc-per", choices=["line", "file"], default="line", help="one document per line (upstream) or per file"
    )
    parser.add_argument(
        "--input-format",
        choices=["auto", "text", "jsonl"],
        default="auto",
        help="auto: JSONL for *.jsonl / *.ndjson (before .gz/.zst), plain text otherwise",
    )
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (dotted path allowed)")
    parser.add_argument("--format", choices=["baichuan", "megatron"], default="baichuan", help="output format")
    parser.add_argument(
        "--shard-size",
        "--shard-tokens",
        dest="shard_tokens",
        type=size_arg,
        default=size_arg("256M"),
        help="tokens per shard, e.g. 64M (K, M, G: powers of 1024; KB, MB, GB: powers of 1000) "
        "(Megatron format: tokens between checkpoints); default 256M",
    )
    parser.add_argument(
        "--invalid-utf8",
        choices=["ignore", "replace"],
        default="ignore",
        help="drop invalid UTF-8 bytes (upstream's errors='ignore') or replace them with U+FFFD; counted per file",
    )
    parser.add_argument("--no-strip", action="store_true", help="do not strip whitespace around each document")
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="skip unreadable files (listed in the manifest) instead of stopping with an error",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted job in OUT_DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous job's files in OUT_DIR")
    # Testing aid: SIGKILL this process right after its Nth checkpoint (exact kill points for resume tests).
    parser.add_argument("--debug-kill-after-checkpoints", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-doc-bytes", type=size_arg, default=size_arg("256M"), help="longest document accepted (bytes, e.g. 256M)"
    )
    parser.add_argument(
        "--megatron-prefix", default="corpus_text_document", help="Megatron output: OUT_DIR/PREFIX.{bin,idx}"
    )
    parser.add_argument(
        "--partition",
        metavar="I/N",
        help="tokenize only the I-th (from 0) of N contiguous shares of the inputs, balanced by bytes "
        "(files are never split); run all N (e.g. a Slurm array) into their own OUT_DIRs, then join "
        "them with `baichuan merge-shards`",
    )
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
    from baichuan.corpus import CorpusError, TokenizeConfig, run_tokenize, summary_table
    from baichuan.tokenizer import TokenizerError

    if args.workers < 1:
        print("baichuan tokenize: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.min_tokens < 0:
        print("baichuan tokenize: --min-tokens must be >= 0", file=sys.stderr)
        return 2
    if args.partition is not None:
        from baichuan._tokenizer import parse_partition  # type: ignore[attr-defined]

        try:
            parse_partition(args.partition)
        except CorpusError as e:
            print(f"baichuan tokenize: error: {str(e).removeprefix('invalid corpus options: ')}", file=sys.stderr)
            return 2
        if args.format == "megatron":
            print(f"baichuan tokenize: error: --partition {args.partition}: works with the shard format only "
                  "(merge-shards cannot join Megatron pairs)", file=sys.stderr)
            return 2
    holdout = 0
    if args.holdout is not None:
        try:
            holdout = _holdout_per_million(args.holdout)
        except ValueError as e:
            print(f"baichuan tokenize: error: --holdout {args.holdout}: {e}", file=sys.stderr)
            return 2
    cfg = TokenizeConfig(
        tokenizer=args.tokenizer,
        inputs=list(args.input),
        output=args.output,
        workers=args.workers,
        min_tokens=args.min_tokens,
        append_eos=not args.no_eos,
        doc_per=args.doc_per,
        input_format=args.input_format,
        text_field=args.text_field,
        format=args.format,
        shard_tokens=args.shard_tokens,
        invalid_utf8=args.invalid_utf8,
        strip=not args.no_strip,
        skip_bad_files=args.skip_bad_files,
        resume=args.resume,
        overwrite=args.overwrite,
        max_doc_bytes=args.max_doc_bytes,
        megatron_prefix=args.megatron_prefix,
        partition=args.partition,
        holdout_per_million=holdout,
        extra={"debug_kill_after_checkpoints": args.debug_kill_after_checkpoints}
        if args.debug_kill_after_checkpoints > 0 else {},
    )
    try:
        manifest = run_tokenize(cfg, progress=not args.quiet)
    except (TokenizerError, OSError) as e:  # CorpusError is a TokenizerError (e.g. a bad .model)
        print(f"baichuan tokenize: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"baichuan tokenize: interrupted; continue with --resume (output: {args.output})", file=sys.stderr)
        return 130
    if not args.quiet:
        print(summary_table(manifest))
        print(f"manifest: {os.path.join(args.output, 'manifest.json')}")
    return 0
