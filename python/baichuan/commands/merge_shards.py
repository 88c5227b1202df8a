"""`baichuan merge-shards`: join the outputs of `baichuan tokenize --partition I/N`.

Argument parsing only; the merge runs in Rust (``baichuan.corpus.run_merge``).
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "Join the N outputs of `baichuan tokenize --partition I/N` into the output of a single run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "partitions",
        nargs="+",
        metavar="PART_DIR",
        help="the N output directories of `baichuan tokenize --partition I/N` (any order, all of them)",
    )
    parser.add_argument("--output", required=True, metavar="OUT_DIR", help="output directory (absent or empty)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output in OUT_DIR (deletes only shard files and manifests; other files stay)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line and no summary table")


def run(args: argparse.Namespace) -> int:
    from baichuan.corpus import run_merge, summary_table

    try:  # CorpusError and OSError: printed by baichuan.cli as one line
        manifest = run_merge(args.partitions, args.output, overwrite=args.overwrite, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"baichuan merge-shards: interrupted; {args.output} is incomplete (no manifest.json): "
              "rerun with --overwrite", file=sys.stderr)
        return 130
    if not args.quiet:
        print(summary_table(manifest))
        print(f"manifest: {os.path.join(args.output, 'manifest.json')}")
    return 0
