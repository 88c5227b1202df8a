"""Bulk corpus tokenization: the Python face of ``rust_tokenizer/src/corpus/``.

The work (reading, decompressing, decoding, encoding, writing) runs in Rust threads; this module
builds the job's options, polls its counters for a progress line, and reads the result. The
output format is documented in ``docs/formats.md``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from baichuan import _tokenizer
from baichuan.tokenize_config import TokenizeConfig

CorpusError = _tokenizer.CorpusError

MANIFEST = "manifest.json"
PROGRESS = "progress.json"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _fmt_count(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.1f}G"


def _fmt_eta(s: float | None) -> str:
    if s is None or s != s or s == float("inf"):
        return "--:--"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class ProgressLine:
    """A one-line progress display: percent of input bytes, MB/s, tokens/s, ETA.

    Rewrites the line in place on a terminal; elsewhere prints a line every ``interval`` seconds.
    """

    def __init__(self, stream: TextIO | None = None, interval: float | None = None) -> None:
        stream = stream if stream is not None else sys.stderr  # the one current at call time
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.t0 = time.monotonic()
        self.last = 0.0 if self.tty else self.t0  # off a terminal, the first line comes after `interval`
        self.width = 0

    def render(self, p: dict[str, int], now: float) -> str:
        elapsed = max(now - self.t0, 1e-9)
        todo = max(p["raw_bytes_total"] - p["raw_bytes_skipped"], 1)
        done = p["raw_bytes_read"]
        frac = min(done / todo, 1.0)
        rate_raw = done / elapsed
        eta = (todo - done) / rate_raw if rate_raw > 0 else None
        return (
            f"tokenize {frac * 100:5.1f}% | files {p['files_done']}/{p['files_total']} | "
            f"{_fmt_bytes(p['text_bytes'])} text, {_fmt_bytes(rate_raw)}/s read | "
            f"{_fmt_count(p['tokens'])} tokens, {_fmt_count(p['tokens'] / elapsed)} tok/s | "
            f"ETA {_fmt_eta(eta)}"
        )

    def update(self, p: dict[str, int], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        line = self.render(p, now)
        if self.tty:
            pad = max(self.width - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Prints a line of its own (a warning) without mixing it into the progress line."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class MergeProgressLine(ProgressLine):
    """The progress line of ``baichuan merge-shards`` (bytes of shards copied)."""

    def render(self, p: dict[str, int], now: float) -> str:
        elapsed = max(now - self.t0, 1e-9)
        todo = max(p["raw_bytes_total"], 1)
        done = p["raw_bytes_read"]
        rate = done / elapsed
        eta = (todo - done) / rate if rate > 0 else None
        return (
            f"merge-shards {min(done / todo, 1.0) * 100:5.1f}% | shards {p['files_done']}/{p['files_total']} | "
            f"{_fmt_count(p['tokens'])} tokens, {_fmt_bytes(rate)}/s | ETA {_fmt_eta(eta)}"
        )


WARNING_PREFIX = "baichuan tokenize: warning: "


def run_tokenize(
    config: TokenizeConfig,
    progress: bool = True,
    stream: TextIO | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs a job to the end and returns its manifest. Ctrl-C stops it at a safe point (the output
    stays resumable with ``resume=True``) and re-raises ``KeyboardInterrupt``.

    Warnings (our own outputs found among the inputs and left out; files that look binary) go to
    ``warn`` as they come, one line each naming the file; by default they are printed to
    ``stream`` as ``baichuan tokenize: warning: ...`` (also with ``progress=False``)."""
    stream = stream if stream is not None else sys.stderr
    job = _tokenizer.CorpusJob(config.to_json())
    return _run_job(job, ProgressLine(stream) if progress else None, stream, warn)


def run_merge(
    partitions: list[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    overwrite: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Merges the outputs of ``baichuan tokenize --partition I/N`` (all N, any order) into
    ``output``, byte-identical to a single run of the whole job (``docs/formats.md``); returns the
    merged manifest. Every partition is checked before anything is written."""
    config = {"inputs": [os.fspath(p) for p in partitions], "output": os.fspath(output), "overwrite": overwrite}
    stream = stream if stream is not None else sys.stderr
    job = _tokenizer.CorpusJob.merge(json.dumps(config))
    return _run_job(job, MergeProgressLine(stream) if progress else None, stream, None)


def _run_job(job: Any, bar: ProgressLine | None, stream: TextIO, warn: Callable[[str], None] | None) -> dict[str, Any]:
    def flush_warnings() -> None:
        for w in job.take_warnings():
            if warn is not None:
                warn(w)
            elif bar is not None:
                bar.message(WARNING_PREFIX + w)
            else:
                stream.write(WARNING_PREFIX + w + "\n")
                stream.flush()

    job.start()
    try:
        while not job.wait(0.1):
            flush_warnings()
            if bar is not None:
                bar.update(job.progress())
    except KeyboardInterrupt:
        job.cancel()
        job.wait(3600.0)
        flush_warnings()
        if bar is not None:
            bar.close()
        raise
    flush_warnings()
    try:
        result = job.result()
    except BaseException:
        if bar is not None and bar.width:
            bar.close()
        raise
    if bar is not None:
        bar.update(job.progress(), force=True)
        bar.close()
    return json.loads(result)


def load_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest (the job did not finish; rerun it with --resume)")
    return json.loads(path.read_text(encoding="utf-8"))


def iter_documents(out_dir: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Yields each document's token ids (EOS included when appended), in order, from a finished
    output directory of either format (memory-mapped; verification and tools, not training).
    The shard format is read by ``baichuan.data.ShardManifest`` (the one shard reader); this
    module reads only the Megatron pair, which training does not read."""
    from baichuan.data import SHARD_FORMAT, ShardManifest, safe_child

    out = Path(out_dir)
    m = load_manifest(out)
    if m["format"] == SHARD_FORMAT:
        yield from ShardManifest.load(out).documents()
    elif m["format"] == "megatron-mmap":
        mg, where = m["megatron"], out / MANIFEST
        yield from _iter_megatron(safe_child(out, mg["bin"], where), safe_child(out, mg["idx"], where))
    else:
        raise ValueError(f"{out / MANIFEST}: unknown format {m['format']!r}")


_MEGATRON_DTYPES: dict[int, np.dtype[Any]] = {8: np.dtype("<u2"), 4: np.dtype("<i4")}


def _iter_megatron(bin_p: Path, idx_p: Path) -> Iterator[np.ndarray]:
    raw = idx_p.read_bytes()
    if raw[:9] != b"MMIDIDX\x00\x00" or int.from_bytes(raw[9:17], "little") != 1:
        raise ValueError(f"{idx_p}: not a Megatron MMIDIDX version 1 index")
    dt = _MEGATRON_DTYPES[raw[17]]
    n = int.from_bytes(raw[18:26], "little")
    d = int.from_bytes(raw[26:34], "little")
    lengths = np.frombuffer(raw, "<i4", n, 34)
    pointers = np.frombuffer(raw, "<i8", n, 34 + 4 * n)
    doc_index = np.frombuffer(raw, "<i8", d, 34 + 12 * n)
    toks = np.memmap(bin_p, dtype=dt, mode="r") if bin_p.stat().st_size else np.zeros(0, dt)
    for j in range(d - 1):
        starts = [pointers[i] // dt.itemsize for i in range(doc_index[j], doc_index[j + 1])]
        parts = [toks[s : s + lengths[i]] for s, i in zip(starts, range(doc_index[j], doc_index[j + 1]))]
        yield np.concatenate(parts) if parts else np.zeros(0, dt)


def summary_table(manifest: dict[str, Any], max_files: int = 20) -> str:
    """A plain-text table of the job's counts, per input file and in total."""
    head = ("file", "docs", "dropped", "empty", "tokens", "bytes", "bad utf8", "bad json", "status")
    rows: list[tuple[str, ...]] = []

    def row(name: str, c: dict[str, int], status: str) -> tuple[str, ...]:
        return (
            name,
            str(c["documents"]),
            str(c["dropped"]),
            str(c["empty"]),
            str(c["tokens"]),
            _fmt_bytes(c["bytes"]),
            str(c["invalid_utf8"]),
            str(c["bad_json"]),
            status,
        )

    inputs = manifest["inputs"]
    for f in inputs[:max_files]:
        name = f["path"]
        if len(name) > 48:
            name = "..." + name[-45:]
        status = f["status"] if f["status"] == "ok" else f"skipped: {f.get('error') or ''}"[:60]
        rows.append(row(name, f["counts"], status))
    if len(inputs) > max_files:
        rows.append((f"... {len(inputs) - max_files} more files", *([""] * (len(head) - 1))))
    c = manifest["counts"]
    rows.append(row(f"TOTAL ({c['files']} files)", c, f"{c['bad_files']} skipped"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    out = [line(head), sep, *(line(r) for r in rows[:-1]), sep, line(rows[-1])]
    if c.get("holdout_documents"):
        out.append(f"held out: {c['holdout_documents']} documents, {c['holdout_tokens']} tokens "
                   f"(in {manifest['holdout']['path']}/, not in the totals above)")
    if manifest["format"] == "baichuan-shards":
        out.append(f"{len(manifest['shards'])} shard(s), dtype {manifest['dtype']}")
    else:
        mg = manifest["megatron"]
        out.append(f"Megatron pair {mg['bin']} / {mg['idx']}, dtype code {mg['dtype_code']}, {mg['sequences']} sequences")
    return "\n".join(out)

