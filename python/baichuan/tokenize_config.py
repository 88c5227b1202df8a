"""``TokenizeConfig``: the options of a ``baichuan tokenize`` job (re-exported by
``baichuan.corpus``), in a module of its own so that building the CLI's parser stays light (no
numpy, no extension).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from baichuan.units import size_arg

# Upstream Baichuan-7B's DataEngine.MIN_TEXT_LEN: documents of fewer tokens (EOS included) are
# dropped. One value for `baichuan tokenize --min-tokens` and `train --data TEXT_DIR` (data.py).
MIN_TEXT_TOKENS = 20


def _arg(default: Any, help: str | None = None, **meta: Any) -> Any:
    """A field with its ``baichuan tokenize`` flag's metadata (baichuan.cli_fields)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TokenizeConfig:
    """Options of ``baichuan tokenize`` (field names match the Rust ``CorpusConfig``).

    The defaults here are the command's (its flags come from this dataclass, baichuan.cli_fields)
    and the job's: :meth:`to_json` passes every field to Rust, so the ``serde`` defaults of
    ``CorpusConfig`` never apply to a job started from Python.
    """

    tokenizer: str = field(metadata={"help": "SentencePiece .model file"})
    inputs: list[str] = field(metadata={
        "flag": "--input", "nargs": "+", "metavar": "PATH",
        "help": "files, directories (read recursively, sorted; hidden entries skipped) or glob patterns; "
        ".gz and .zst are decompressed; our own outputs found there (earlier tokenize output folders, "
        "token .bin/.idx files, OUT_DIR) are left out with a warning"})
    output: str = field(metadata={"metavar": "OUT_DIR", "help": "output directory"})
    workers: int = _arg(0, "encoding threads; 0 = one per core", show_default="0, one per core")
    min_tokens: int = _arg(MIN_TEXT_TOKENS, "drop documents shorter than this, counting the EOS when appended (upstream: 20)")
    append_eos: bool = _arg(True, "do not append the EOS id to each document", negate="--no-eos")
    doc_per: str = _arg("line", "one document per line (upstream) or per file", choices=["line", "file"])
    input_format: str = _arg("auto", "auto: JSONL for *.jsonl / *.ndjson (before .gz/.zst), plain text otherwise",
                             choices=["auto", "text", "jsonl"])
    text_field: str = _arg("text", "JSONL field holding the text (dotted path allowed)")
    format: str = _arg("baichuan", "output format", choices=["baichuan", "megatron"])
    shard_tokens: int = _arg(
        1 << 28, "tokens per shard, e.g. 64M (K, M, G: powers of 1024; KB, MB, GB: powers of 1000) "
        "(Megatron format: tokens between checkpoints)", flag="--shard-size", aliases=("--shard-tokens",),
        type=size_arg, show_default="256M")
    invalid_utf8: str = _arg("ignore", "drop invalid UTF-8 bytes (upstream's errors='ignore') or replace them with "
                             "U+FFFD; counted per file", choices=["ignore", "replace"])
    strip: bool = _arg(True, "do not strip whitespace around each document", negate="--no-strip")
    skip_bad_files: bool = _arg(False, "skip unreadable files (listed in the manifest) instead of stopping with an error")
    resume: bool = _arg(False, "continue an interrupted job in OUT_DIR")
    overwrite: bool = _arg(False, "replace a previous job's files in OUT_DIR")
    max_doc_bytes: int = _arg(256 << 20, "longest document accepted (bytes, e.g. 256M)", type=size_arg,
                              show_default="256M")
    chunk_bytes: int = 1 << 20  # text per work unit handed to a worker (no flag)
    megatron_prefix: str = _arg("corpus_text_document", "Megatron output: OUT_DIR/PREFIX.{bin,idx}")
    partition: str | None = _arg(
        None, "tokenize only the I-th (from 0) of N contiguous shares of the inputs, balanced by bytes "
        "(files are never split); run all N (e.g. a Slurm array) into their own OUT_DIRs, then join "
        "them with `baichuan merge-shards`", metavar="I/N")
    holdout_per_million: int = 0  # documents per million held out into OUT/holdout/ (flag: --holdout FRACTION)
    extra: dict[str, Any] = field(default_factory=dict)  # Rust-only options (the hidden test flag)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        d["tokenizer"] = os.fspath(d["tokenizer"])
        d["output"] = os.fspath(d["output"])
        d["inputs"] = [os.fspath(p) for p in d["inputs"]]
        return json.dumps(d)
