"""baichuan.data: shard reading (docs/formats.md), packing, rank split, shuffle, exact positions,
and the upstream text-directory stream."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from baichuan.data import (
    DataError,
    ShardManifest,
    ShardSource,
    TextDirSource,
    file_sha256,
    list_text_files,
    open_source,
)
from helpers import LLAMA2_SPM as SPM
from helpers import MMLU, SHARED, check_resume_equal


def need_shared() -> None:
    if not SPM.is_file() or not MMLU.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED}")


def spm_encoder(model: Path = SPM):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return lambda texts: [sp.encode(t) for t in texts]


def make_text_dir(out: Path, n_files: int = 4, lines: int = 120) -> Path:
    """Real English text: the first lines of a few MMLU test files, one document per line."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(MMLU.glob("*.csv"), key=lambda p: -p.stat().st_size)[:n_files]:
        with open(src, encoding="utf-8") as f:
            head = [line for _, line in zip(range(lines), f)]
        (out / src.name.replace(".csv", ".txt")).write_text("".join(head), encoding="utf-8")
    return out


def write_shards(
    out: Path,
    docs: list[list[int]],
    tokenizer: Path,
    vocab_size: int,
    dtype: str = "uint16",
    n_shards: int = 2,
    eos_id: int = 2,
) -> Path:
    """Shards in the documented format (docs/formats.md), for tests of the reader itself."""
    out.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(docs)), n_shards)
    shards = []
    for i, part in enumerate(parts):
        toks = [np.asarray(docs[j], dtype=dtype) for j in part]
        offsets = np.cumsum([0] + [len(t) for t in toks]).astype("<u8")
        data = np.concatenate(toks).astype(dtype) if toks else np.zeros(0, dtype=dtype)
        (out / f"shard-{i:05d}.bin").write_bytes(data.astype(np.dtype(dtype).newbyteorder("<")).tobytes())
        (out / f"shard-{i:05d}.idx").write_bytes(offsets.tobytes())
        name = f"shard-{i:05d}"
        shards.append({"bin": f"{name}.bin", "idx": f"{name}.idx", "documents": len(toks), "tokens": int(offsets[-1])})
    manifest = {
        "format": "baichuan-shards",
        "version": 1,
        "dtype": dtype,
        "tokenizer": {"sha256": file_sha256(tokenizer), "vocab_size": vocab_size, "eos_id": eos_id},
        "append_eos": True,
        "min_tokens": 20,
        "shards": shards,
        "counts": {
            "documents": len(docs), "dropped": 0, "tokens": sum(s["tokens"] for s in shards), "bytes": 0, "invalid_utf8": 0,
        },
        "inputs": [],
        "options": {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


def tokenize_with_cli(text_dir: Path, out: Path, shard_tokens: str = "20000") -> Path:
    """Real `baichuan tokenize` output (the corpus helper's Rust writer), several shards."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "baichuan", "tokenize", "--tokenizer", str(SPM), "--input", str(text_dir),
         "--output", str(out), "--shard-size", shard_tokens, "--workers", "2", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return out


def upstream_docs(text_dir: Path, encode, eos: int = 2) -> list[list[int]]:
    """Upstream Baichuan-7B's rule, written out plainly: strip, encode, + EOS, drop if < 20 tokens."""
    docs = []
    for path in list_text_files(text_dir):
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            cc = encode([line.strip()])[0] + [eos]
            if len(cc) >= 20:
                docs.append(cc)
    return docs


def synthetic_shards(tmp: Path, n_docs: int = 50, seed: int = 0, **kw) -> Path:
    rng = np.random.default_rng(seed)
    docs = [list(rng.integers(3, 1000, rng.integers(5, 80))) + [2] for _ in range(n_docs)]
    tmp.mkdir(parents=True, exist_ok=True)
    tok = tmp / "tok.model"
    tok.write_bytes(b"not a real tokenizer, only hashed")
    return write_shards(tmp / "shards", docs, tok, 32000, **kw)


# ------------------------------------------------------------------------------- shards
def test_windows_cover_the_stream_across_shards(tmp_path: Path) -> None:
    d = synthetic_shards(tmp_path, n_shards=3)
    m = ShardManifest.load(d)
    stream = np.concatenate([np.fromfile(s.bin_path, dtype="<u2") for s in m.shards]).astype(np.int64)
    src = ShardSource(m, seq_len=33, micro_batch=1, rank=0, world_size=1, seed=0)
    assert src.n_windows == len(stream) // 33
    for w in range(src.n_windows):
        np.testing.assert_array_equal(src.window(w), stream[w * 33 : (w + 1) * 33])


def test_ranks_are_disjoint_and_shuffle_is_deterministic(tmp_path: Path) -> None:
    m = ShardManifest.load(synthetic_shards(tmp_path))
    seen = []
    for r in range(3):
        src = ShardSource(m, 17, 2, r, 3, seed=7)
        ids = np.concatenate([src.window_ids(0, k, 2) for k in range(0, src.per_rank - 1, 2)])
        again = ShardSource(m, 17, 2, r, 3, seed=7)
        np.testing.assert_array_equal(ids, np.concatenate([again.window_ids(0, k, 2) for k in range(0, src.per_rank - 1, 2)]))
        seen.append(set(ids.tolist()))
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    other = ShardSource(m, 17, 2, 0, 3, seed=8)
    assert not np.array_equal(other.window_ids(0, 0, 10), ShardSource(m, 17, 2, 0, 3, seed=7).window_ids(0, 0, 10))


def test_shard_position_resumes_exactly_across_epochs(tmp_path: Path) -> None:
    m = ShardManifest.load(synthetic_shards(tmp_path, n_docs=20))
    ref = ShardSource(m, 29, 2, 1, 2, seed=3)
    batches = [ref.next_batch() for _ in range(40)]  # several epochs
    assert ref.epoch >= 2
    for k in (0, 1, 7, 23):
        src = ShardSource(m, 29, 2, 1, 2, seed=3)
        for _ in range(k):
            src.next_batch()
        state = json.loads(json.dumps(src.state_dict()))
        resumed = ShardSource(m, 29, 2, 1, 2, seed=3, state=state)
        for j in range(k, 40):
            np.testing.assert_array_equal(resumed.next_batch(), batches[j])


def test_real_tokenize_output_is_upstreams_document_stream(tmp_path: Path) -> None:
    need_shared()
    text = make_text_dir(tmp_path / "text", 3, 80)
    d = tokenize_with_cli(text, tmp_path / "shards", shard_tokens="3000")
    m = ShardManifest.load(d)
    assert len(m.shards) > 1 and m.tokenizer_sha256 == file_sha256(SPM) and m.vocab_size == 32000
    flat = np.concatenate([np.asarray(x) for x in upstream_docs(text, spm_encoder())])
    src = ShardSource(m, seq_len=41, micro_batch=1, rank=0, world_size=1, seed=0)
    assert src.n_windows == len(flat) // 41
    for w in range(src.n_windows):  # windows = the upstream stream cut in order, across shard files
        np.testing.assert_array_equal(src.window(w), flat[w * 41 : (w + 1) * 41])


def test_real_text_shards_pack_documents_with_eos(tmp_path: Path) -> None:
    need_shared()
    enc = spm_encoder()
    docs = upstream_docs(make_text_dir(tmp_path / "text", 2, 60), enc)
    d = write_shards(tmp_path / "shards", docs, SPM, 32000)
    src = open_source(d, seq_len=65, micro_batch=2, rank=0, world_size=1, seed=0, vocab_size=32000,
                      expected_tokenizer_sha256=file_sha256(SPM))
    flat = np.concatenate([np.asarray(x) for x in docs])
    b = src.next_batch()
    assert b.shape == (2, 65) and b.dtype == np.int64
    for row in b:  # every window is a contiguous piece of the document stream
        starts = np.flatnonzero(flat[: len(flat) - 64] == row[0])
        assert any(np.array_equal(flat[s : s + 65], row) for s in starts)
    assert (flat == 2).sum() == len(docs)


# ------------------------------------------------------------------------------- bad input
def test_missing_and_incomplete_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        open_source(tmp_path / "nope", seq_len=9, micro_batch=1, rank=0, world_size=1, seed=0, vocab_size=100)
    d = synthetic_shards(tmp_path)
    (d / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json; the tokenizer run did not finish"):
        open_source(d, seq_len=9, micro_batch=1, rank=0, world_size=1, seed=0, vocab_size=32000)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no text files"):
        open_source(empty, seq_len=9, micro_batch=1, rank=0, world_size=1, seed=0, vocab_size=32000, tokenizer_path=SPM)


def test_empty_and_too_small_shards(tmp_path: Path) -> None:
    tok = tmp_path / "t.model"
    tok.write_bytes(b"x")
    d = write_shards(tmp_path / "s", [], tok, 32000, n_shards=1)
    with pytest.raises(DataError, match="no tokens"):
        open_source(d, seq_len=9, micro_batch=1, rank=0, world_size=1, seed=0, vocab_size=32000)
    d2 = write_shards(tmp_path / "s2", [[5] * 30 + [2]], tok, 32000, n_shards=1)
    with pytest.raises(DataError, match="need at least"):
        open_source(d2, seq_len=17, micro_batch=1, rank=0, world_size=2, seed=0, vocab_size=32000)


def test_tokenizer_mismatch_and_vocab_checks(tmp_path: Path) -> None:
    d = synthetic_shards(tmp_path)
    with pytest.raises(DataError, match="different tokenizer"):
        open_source(d, seq_len=9, micro_batch=1, rank=0, world_size=1, seed=0, vocab_size=32000,
                    expected_tokenizer_sha256="0" * 64, expected_from="model folder")
    with pytest.raises(DataError, match="more than the model's vocab_size"):
        open_source(d, seq_len=9, micro_batch=1, rank=0, world_size=1, seed=0, vocab_size=1000)
    m = json.loads((d / "manifest.json").read_text())
    m["tokenizer"]["vocab_size"] = 100000
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="does not fit dtype uint16"):
        ShardManifest.load(d)


def test_manifest_paths_and_sizes_are_checked(tmp_path: Path) -> None:
    d = synthetic_shards(tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    bad = json.loads(json.dumps(m))
    bad["shards"][0]["bin"] = "../../etc/passwd"
    (d / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="without '..'"):
        ShardManifest.load(d)
    bad = json.loads(json.dumps(m))
    bad["shards"][0]["tokens"] += 1
    (d / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="bytes, but the manifest says"):
        ShardManifest.load(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read the manifest"):
        ShardManifest.load(d)


# ------------------------------------------------------------------------------- text dir
def _take(src: TextDirSource, n: int) -> list[np.ndarray]:
    return [src.next_batch() for _ in range(n)]


def test_text_stream_follows_upstream_rules(tmp_path: Path) -> None:
    need_shared()
    enc = spm_encoder()
    text = make_text_dir(tmp_path / "text", 2, 40)
    files = list_text_files(text)
    src = TextDirSource(files, enc, 2, seq_len=50, micro_batch=1, rank=0, world_size=1, lines_per_batch=7)
    try:
        got = np.concatenate([b[0] for b in _take(src, 60)])
    finally:
        src.close()
    flat = np.concatenate([np.asarray(x) for x in upstream_docs(text, enc)])
    reps = int(np.ceil(len(got) / len(flat))) + 1
    np.testing.assert_array_equal(got, np.tile(flat, reps)[: len(got)])  # packed, then the next epoch


def test_text_stream_splits_files_across_ranks(tmp_path: Path) -> None:
    need_shared()
    enc = spm_encoder()
    files = list_text_files(make_text_dir(tmp_path / "text", 3, 30))
    a = TextDirSource(files, enc, 2, 40, 2, rank=0, world_size=2)
    b = TextDirSource(files, enc, 2, 40, 2, rank=1, world_size=2)
    try:
        assert [f.name for f in a.files] == [files[0].name, files[2].name]
        assert [f.name for f in b.files] == [files[1].name]
        assert not np.array_equal(a.next_batch(), b.next_batch())
    finally:
        a.close()
        b.close()
    with pytest.raises(DataError, match="rank 3 gets none"):
        TextDirSource(files, enc, 2, 40, 2, rank=3, world_size=4)


def test_text_stream_resumes_exactly(tmp_path: Path) -> None:
    need_shared()
    enc = spm_encoder()
    files = list_text_files(make_text_dir(tmp_path / "text", 2, 30))
    # 50 batches cross files and epochs; the resumed source reads another number of lines per batch
    check_resume_equal(
        lambda state: TextDirSource(files, enc, 2, 37, 2, 0, 1, state=state, lines_per_batch=5 if state is None else 3),
        stops=(1, 6, 19, 33), total=50,
    )


def test_text_stream_errors(tmp_path: Path) -> None:
    enc = lambda texts: [[5] * 3 for _ in texts]  # noqa: E731 - every line too short
    d = tmp_path / "short"
    d.mkdir()
    (d / "a.txt").write_text("x\ny\n")
    src = TextDirSource(list_text_files(d), enc, 2, 9, 1, 0, 1)
    with pytest.raises(DataError, match="nothing to train on"):
        src.next_batch()
    src.close()
    empty = tmp_path / "emptyfiles"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    src = TextDirSource(list_text_files(empty), enc, 2, 9, 1, 0, 1)
    with pytest.raises(DataError, match="nothing to train on"):
        src.next_batch()
    src.close()


def test_text_dir_needs_a_tokenizer(tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    (d / "a.txt").write_text("hello\n")
    with pytest.raises(DataError, match="pass the tokenizer"):
        open_source(d, seq_len=9, micro_batch=1, rank=0, world_size=1, seed=0, vocab_size=100)
    shutil.rmtree(d)


def test_text_stream_is_bounded_not_whole_corpus(tmp_path: Path) -> None:
    """The reader thread stops at the bounded queue: it does not read ahead through the corpus."""
    import time

    d = tmp_path / "big"
    d.mkdir()
    line = "word " * 30 + "\n"
    (d / "a.txt").write_text(line * 20000)  # 20000 documents of 31 tokens
    calls: list[int] = []

    def enc(texts: list[str]) -> list[list[int]]:
        calls.append(len(texts))
        return [[7] * 30 for _ in texts]

    src = TextDirSource(list_text_files(d), enc, 2, seq_len=33, micro_batch=1, rank=0, world_size=1,
                        lines_per_batch=100, queue_sequences=8)
    try:
        src.next_batch()
        time.sleep(0.5)
        assert src._queue.qsize() <= 8
        # 8 queued sequences + the one taken need ~9 documents: at most a couple of 100-line batches read
        assert sum(calls) <= 300, sum(calls)
    finally:
        src.close()
