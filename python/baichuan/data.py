"""Training data: the only Python module that reads token shards.

Two sources, one interface (:class:`BatchSource`): ``next_batch()`` returns an ``int64`` array of
shape ``(micro_batch, max_length + 1)``; ``state_dict()`` is a small JSON-able dict that, handed
back to the constructor, continues with exactly the next batch (this is what checkpoints store).

1. :class:`ShardSource` reads the shards written by ``baichuan tokenize`` (``docs/formats.md``)
   through ``numpy.memmap``. All shards are one token stream (documents already end with EOS);
   it is cut into non-overlapping windows of ``max_length + 1`` tokens, packed across documents
   and across shard boundaries. Every epoch visits the windows in a fresh permutation drawn from
   ``(seed, epoch)``; rank ``r`` of ``W`` takes permutation entries ``r, r + W, r + 2W, ...``, so
   ranks never share a window. The position is ``(epoch, index)``: nothing else is needed to
   resume exactly. The tail of the stream shorter than one window is not used.

2. :class:`TextDirSource` is upstream Baichuan-7B's layout: a directory of text files, one
   document per line. Files and documents are exactly those of ``baichuan tokenize`` on the same
   directory: its Rust discovery (``_tokenizer.discover_inputs``) and its Rust document reader
   (``_tokenizer.DocumentReader``: ``.gz``/``.zst``, universal newlines, JSONL, invalid UTF-8
   dropped, stripped). File ``i`` goes to rank ``i % W`` (upstream assigns ``os.listdir`` order
   the same way). Each document is encoded, followed by EOS, and dropped if the result is shorter
   than 20 tokens (upstream's ``MIN_TEXT_LEN`` rule, ``baichuan tokenize``'s ``--min-tokens``
   default). A background thread
   reads lines in batches and encodes them with the Rust tokenizer's ``encode_batch`` (which
   releases the GIL and uses its own threads); sequences of ``max_length + 1`` tokens are packed
   across documents and files and handed over through a bounded queue, so the corpus is never held
   in memory. Unlike upstream, the remainder of a file is carried into the next sequence instead
   of being thrown away. After the last file the rank starts its files again (next epoch). The
   position is ``(epoch, file, decompressed byte offset of a document, tokens of it already
   used)``.

A weighted mixture of shard directories (``--data 0.7:a/ 0.3:b/``) and the held-out sequences of
validation are in :mod:`baichuan.mixture`, built on :class:`ShardSource`'s window reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from baichuan.errors import BaichuanError
from baichuan.tokenize_config import MIN_TEXT_TOKENS

SHARD_FORMAT = "baichuan-shards"
MANIFEST = "manifest.json"
_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}

Encoder = Callable[[list[str]], list[list[int]]]


class DataError(BaichuanError, ValueError):
    """Bad or inconsistent training data; the message names the file or directory."""


class BatchSource(Protocol):
    micro_batch: int
    seq_len: int

    def next_batch(self) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class ShardInfo:
    bin_path: Path
    idx_path: Path
    documents: int
    tokens: int


@dataclass(frozen=True)
class ShardManifest:
    directory: Path
    dtype: np.dtype
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    shards: tuple[ShardInfo, ...]

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ShardManifest:
        """Read and check ``manifest.json`` and the shard files it names (sizes, offsets)."""
        d = Path(directory)
        path = d / MANIFEST
        if not d.is_dir():
            raise DataError(f"training data not found: {d} is not a directory")
        if not path.is_file():
            if any(d.glob("*.bin")):
                raise DataError(
                    f"{d}: shard files but no {MANIFEST}; the tokenizer run did not finish "
                    "(the manifest is written last)"
                )
            raise DataError(f"{d}: no {MANIFEST}; not a `baichuan tokenize` output directory")
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read the manifest ({e})") from None
        if not isinstance(m, dict) or m.get("format") != SHARD_FORMAT:
            found = m.get("format") if isinstance(m, dict) else None
            raise DataError(f"{path}: not a {SHARD_FORMAT} manifest (format={found!r})")
        if m.get("version") != 1:
            raise DataError(f"{path}: unsupported manifest version {m.get('version')!r} (this reader knows 1)")
        dtype_name = m.get("dtype")
        if dtype_name not in _DTYPES:
            raise DataError(f"{path}: dtype must be uint16 or uint32, got {dtype_name!r}")
        dtype = _DTYPES[dtype_name]
        tok = m.get("tokenizer")
        if not isinstance(tok, dict):
            raise DataError(f"{path}: missing the 'tokenizer' object")
        try:
            sha = str(tok["sha256"]).lower()
            vocab = int(tok["vocab_size"])
            eos = int(tok.get("eos_id", 2))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: bad 'tokenizer' entry ({e!r})") from None
        if vocab > np.iinfo(dtype).max + 1:
            raise DataError(
                f"{path}: vocabulary of {vocab} tokens does not fit dtype {dtype_name} "
                f"(at most {np.iinfo(dtype).max + 1}); re-tokenize with uint32 shards"
            )
        shards = m.get("shards")
        if not isinstance(shards, list):
            raise DataError(f"{path}: 'shards' must be a list")
        infos = []
        for i, s in enumerate(shards):
            try:
                bin_p = safe_child(d, s["bin"], path)
                idx_p = safe_child(d, s["idx"], path)
                docs, toks = int(s["documents"]), int(s["tokens"])
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}: shard entry {i} is malformed ({e!r})") from None
            for p in (bin_p, idx_p):
                if not p.is_file():
                    raise DataError(f"{path}: shard file {p} is missing")
            if bin_p.stat().st_size != toks * dtype.itemsize:
                raise DataError(
                    f"{bin_p}: {bin_p.stat().st_size} bytes, but the manifest says {toks} tokens of "
                    f"{dtype_name} ({toks * dtype.itemsize} bytes)"
                )
            if idx_p.stat().st_size != (docs + 1) * 8:
                raise DataError(f"{idx_p}: expected {docs + 1} uint64 offsets for {docs} documents")
            if toks > 0:
                infos.append(ShardInfo(bin_p, idx_p, docs, toks))
        return cls(d, dtype, sha, vocab, eos, tuple(infos))

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's token ids (EOS included), in order, memory-mapped (tools and tests;
        training reads windows through :class:`ShardSource`)."""
        for s in self.shards:
            offsets = np.fromfile(s.idx_path, dtype="<u8")
            tokens = np.memmap(s.bin_path, dtype=self.dtype, mode="r")
            for a, b in zip(offsets[:-1], offsets[1:]):
                yield np.asarray(tokens[a:b])


def safe_child(root: Path, name: Any, manifest: Path) -> Path:
    if not isinstance(name, str) or not name:
        raise DataError(f"{manifest}: shard path must be a non-empty string, got {name!r}")
    p = Path(name)
    if p.is_absolute() or ".." in p.parts:
        raise DataError(f"{manifest}: shard path {name!r} must be relative to the manifest, without '..'")
    return root / p


def check_tokenizer(manifest: ShardManifest, expected_sha256: str | None, expected_from: str) -> None:
    """Refuse shards made with another tokenizer than the one the model uses."""
    if expected_sha256 and manifest.tokenizer_sha256 != expected_sha256.lower():
        raise DataError(
            f"{manifest.directory}: these shards were tokenized with a different tokenizer "
            f"(sha256 {manifest.tokenizer_sha256[:16]}...) than the model's ({expected_from}: "
            f"sha256 {expected_sha256[:16]}...); re-run `baichuan tokenize` with the model's tokenizer"
        )


class ShardSource:
    """Fixed windows of ``seq_len`` tokens over memory-mapped shards; see the module docstring."""

    def __init__(
        self,
        manifest: ShardManifest,
        seq_len: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        state: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.manifest = manifest
        self.seq_len = seq_len
        self.micro_batch = micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        total = manifest.total_tokens
        if total == 0:
            raise DataError(f"{manifest.directory}: the shards hold no tokens (empty corpus?)")
        self.n_windows = total // seq_len
        self.per_rank = self.n_windows // world_size
        need = micro_batch * seq_len * world_size
        if self.per_rank < micro_batch:
            raise DataError(
                f"{manifest.directory}: {total} tokens make {self.n_windows} sequences of max_length+1 = "
                f"{seq_len}, but {world_size} rank(s) x micro-batch {micro_batch} need at least {need} tokens"
            )
        self._bins = [np.memmap(s.bin_path, dtype=manifest.dtype, mode="r") for s in manifest.shards]
        self._starts = np.cumsum([0] + [s.tokens for s in manifest.shards])
        self.epoch, self.index = 0, 0
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None
        if state is not None:
            self._load_state(state)

    def describe(self) -> str:
        return (
            f"{len(self._bins)} shard(s) in {self.manifest.directory}, {self.manifest.total_tokens} tokens, "
            f"{self.n_windows} sequences of {self.seq_len}, {self.per_rank} per rank"
        )

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            dtype = np.int32 if self.n_windows < 2**31 else np.int64
            self._perm = rng.permutation(self.n_windows).astype(dtype, copy=False)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def window_ids(self, epoch: int, index: int, count: int) -> np.ndarray:
        """Global window numbers of this rank's samples ``index .. index+count-1`` in ``epoch``."""
        perm = self._permutation(epoch)
        pos = (np.arange(index, index + count) * self.world_size + self.rank)
        return perm[pos].astype(np.int64)

    def window(self, w: int) -> np.ndarray:
        start = w * self.seq_len
        out = np.empty(self.seq_len, dtype=np.int64)
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < self.seq_len:
            lo = start + filled - int(self._starts[k])
            take = min(self.seq_len - filled, int(self._starts[k + 1]) - (start + filled))
            out[filled : filled + take] = self._bins[k][lo : lo + take]
            filled += take
            k += 1
        return out

    def next_batch(self) -> np.ndarray:
        if self.index + self.micro_batch > self.per_rank:
            self.epoch, self.index = self.epoch + 1, 0
        ids = self.window_ids(self.epoch, self.index, self.micro_batch)
        self.index += self.micro_batch
        return np.stack([self.window(int(w)) for w in ids])

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "shards",
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "n_windows": self.n_windows,
            "tokenizer_sha256": self.manifest.tokenizer_sha256,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "shards":
            raise DataError(f"checkpoint data position is for a {state.get('kind')!r} source, not shards")
        for key, mine in (("seq_len", self.seq_len), ("n_windows", self.n_windows), ("seed", self.seed)):
            if state.get(key) != mine:
                raise DataError(
                    f"cannot resume: the checkpoint's data position has {key}={state.get(key)}, "
                    f"but this run has {mine} (different data, max_length or seed)"
                )
        epoch, index = int(state["epoch"]), int(state["index"])
        if state.get("world_size") != self.world_size:
            # Same global progress, re-divided among a different number of ranks.
            index = index * int(state["world_size"]) // self.world_size
        self.epoch, self.index = epoch, index

    def close(self) -> None:
        self._bins = []


# ------------------------------------------------------------------------------------ text dir
def list_text_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The files ``baichuan tokenize`` reads under ``data_dir``, in its order (its Rust discovery:
    recursive, sorted, hidden entries and our own outputs left out)."""
    from baichuan import _tokenizer

    d = Path(data_dir)
    if not d.exists():
        raise DataError(f"training data not found: {d} does not exist")
    if not d.is_dir():
        raise DataError(f"{d}: expected a directory of text files or `baichuan tokenize` shards")
    names, warnings = _tokenizer.discover_inputs([os.fspath(d)])
    for w in warnings:
        _warn(w)
    if not names:
        raise DataError(f"{d}: no text files found")
    return [Path(n) for n in names]


def _warn(message: str) -> None:
    import sys

    print(f"baichuan: warning: {message}", file=sys.stderr)


@dataclass
class _Doc:
    tokens: np.ndarray
    epoch: int
    file: int
    offset: int


class TextDirSource:
    """Upstream's text-directory layout, tokenized on the fly; see the module docstring."""

    def __init__(
        self,
        files: Sequence[Path],
        encode_batch: Encoder,
        eos_id: int,
        seq_len: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        state: dict[str, Any] | None = None,
        min_tokens: int = MIN_TEXT_TOKENS,
        lines_per_batch: int = 1024,
        queue_sequences: int = 64,
    ) -> None:
        all_files = list(files)
        mine = [f for i, f in enumerate(all_files) if i % world_size == rank]
        if not mine:
            raise DataError(
                f"{len(all_files)} text file(s) for {world_size} ranks: rank {rank} gets none; "
                "split the corpus into at least as many files as ranks"
            )
        self.files = mine
        self._all_names = [str(f) for f in all_files]
        self.encode_batch = encode_batch
        self.eos_id, self.seq_len, self.micro_batch = eos_id, seq_len, micro_batch
        self.rank, self.world_size = rank, world_size
        self.min_tokens, self.lines_per_batch = min_tokens, lines_per_batch
        start = {"epoch": 0, "file": 0, "offset": 0, "skip": 0}
        if state is not None:
            start = self._check_state(state)
        self._state = dict(start)
        self._queue: queue.Queue[tuple[np.ndarray, dict[str, int]] | BaseException] = queue.Queue(queue_sequences)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(dict(start),), daemon=True, name="text-stream")
        self._thread.start()

    def describe(self) -> str:
        return f"{len(self.files)} text file(s) on this rank (of {len(self._all_names)}), tokenized on the fly"

    def _check_state(self, state: dict[str, Any]) -> dict[str, int]:
        if state.get("kind") != "text":
            raise DataError(f"checkpoint data position is for a {state.get('kind')!r} source, not a text directory")
        if state.get("files") != self._all_names or state.get("world_size") != self.world_size:
            raise DataError(
                "cannot resume: the text directory's files or the number of ranks changed since the checkpoint "
                "(a text-directory position is only valid for the same files and ranks)"
            )
        if state.get("seq_len") != self.seq_len:
            raise DataError(f"cannot resume: checkpoint max_length+1 = {state.get('seq_len')}, now {self.seq_len}")
        return {k: int(state[k]) for k in ("epoch", "file", "offset", "skip")}

    # -- producer thread
    def _put(self, item: tuple[np.ndarray, dict[str, int]] | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read_lines(self, start: dict[str, int]):
        """Yields batches of (text, epoch, file, offset, next_position) from the start position on.

        Documents come from the Rust reader of ``baichuan tokenize`` (``_tokenizer.DocumentReader``:
        gzip/zstd, universal newlines, JSONL, invalid UTF-8 dropped, stripped); ``offset`` is a
        document's start in its file's decompressed bytes."""
        from baichuan import _tokenizer

        epoch, fi, offset = start["epoch"], start["file"], start["offset"]
        while not self._stop.is_set():
            path = self.files[fi]
            try:
                reader = _tokenizer.DocumentReader(os.fspath(path), offset)
                while True:
                    docs = reader.read(self.lines_per_batch)
                    for w in reader.take_warnings():
                        _warn(w)
                    if not docs:
                        break
                    yield [(text, epoch, fi, pos) for pos, text in docs], (epoch, fi, reader.offset)
                    if self._stop.is_set():
                        return
            except (OSError, _tokenizer.CorpusError) as e:
                reason = str(e).removeprefix(f"{os.fspath(path)}: ")
                raise DataError(f"{path}: cannot read it: {reason}") from None
            fi, offset = fi + 1, 0
            if fi == len(self.files):
                fi, epoch = 0, epoch + 1
            # the position after a finished file is the start of the next one
            yield [], (epoch, fi, 0)

    def _produce(self, start: dict[str, int]) -> None:
        try:
            buf: deque[_Doc] = deque()
            head = 0  # tokens of buf[0] already used
            buffered = 0
            skip = start["skip"]
            ends_without_doc = 0  # file ends seen since the last kept document
            for batch, (r_epoch, r_file, r_off) in self._read_lines(start):
                if batch:
                    encoded = self.encode_batch([t for t, _, _, _ in batch])
                    for (_, ep, fi, off), ids in zip(batch, encoded):
                        toks = list(ids) + [self.eos_id]
                        if len(toks) < self.min_tokens:
                            continue
                        ends_without_doc = 0
                        arr = np.asarray(toks, dtype=np.int64)
                        if skip:
                            cut = min(skip, len(arr))
                            skip -= cut
                            if cut == len(arr):
                                continue
                            buf.append(_Doc(arr, ep, fi, off))
                            head = cut
                            buffered += len(arr) - cut
                            continue
                        buf.append(_Doc(arr, ep, fi, off))
                        buffered += len(arr)
                else:
                    ends_without_doc += 1
                    if ends_without_doc > len(self.files):
                        raise DataError(
                            f"rank {self.rank}: no line of {[str(p) for p in self.files]} gives a document of at "
                            f"least {self.min_tokens} tokens; nothing to train on"
                        )
                while buffered >= self.seq_len:
                    out = np.empty(self.seq_len, dtype=np.int64)
                    filled = 0
                    while filled < self.seq_len:
                        d = buf[0]
                        take = min(self.seq_len - filled, len(d.tokens) - head)
                        out[filled : filled + take] = d.tokens[head : head + take]
                        filled += take
                        head += take
                        if head == len(d.tokens):
                            buf.popleft()
                            head = 0
                    buffered -= self.seq_len
                    if buf:
                        d = buf[0]
                        after = {"epoch": d.epoch, "file": d.file, "offset": d.offset, "skip": head}
                    else:
                        after = {"epoch": r_epoch, "file": r_file, "offset": r_off, "skip": 0}
                    if not self._put((out, after)):
                        return
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    # -- consumer
    def next_batch(self) -> np.ndarray:
        rows = []
        for _ in range(self.micro_batch):
            while True:
                try:
                    item = self._queue.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        raise DataError("the text reader thread stopped without an error") from None
            if isinstance(item, BaseException):
                raise item
            seq, after = item
            rows.append(seq)
            self._state = after
        return np.stack(rows)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "text",
            **self._state,
            "files": self._all_names,
            "world_size": self.world_size,
            "seq_len": self.seq_len,
        }

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------------------ factory
def is_shard_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def open_source(
    data: str | os.PathLike[str],
    *,
    seq_len: int,
    micro_batch: int,
    rank: int,
    world_size: int,
    seed: int,
    vocab_size: int,
    tokenizer_path: str | os.PathLike[str] | None = None,
    expected_tokenizer_sha256: str | None = None,
    expected_from: str = "",
    state: dict[str, Any] | None = None,
    encode_threads: int | None = None,
) -> BatchSource:
    """The source for ``data``: a shard directory (has ``manifest.json``) or a text directory.

    ``vocab_size`` is the model's; ``expected_tokenizer_sha256`` the sha256 of the model's
    tokenizer file when known (shards made with another tokenizer are refused).
    """
    p = Path(data)
    if not p.exists():
        raise DataError(f"training data not found: {p}")
    if is_shard_dir(p) or (p.is_dir() and any(p.glob("shard-*.bin"))):
        manifest = ShardManifest.load(p)
        check_tokenizer(manifest, expected_tokenizer_sha256, expected_from)
        if manifest.vocab_size > vocab_size:
            raise DataError(
                f"{p}: the shards' tokenizer has {manifest.vocab_size} tokens, more than the model's "
                f"vocab_size {vocab_size}"
            )
        return ShardSource(manifest, seq_len, micro_batch, rank, world_size, seed, state)
    files = list_text_files(p)
    if tokenizer_path is None:
        raise DataError(f"{p} is a directory of text files: pass the tokenizer (.model) to tokenize it on the fly")
    from baichuan import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    if tok.vocab_size > vocab_size:
        raise DataError(
            f"{tokenizer_path}: the tokenizer has {tok.vocab_size} tokens, more than the model's vocab_size {vocab_size}"
        )

    def encode(texts: list[str]) -> list[list[int]]:
        return tok.encode_batch(texts, encode_threads)

    return TextDirSource(files, encode, tok.eos_id, seq_len, micro_batch, rank, world_size, state)
