"""`baichuan tokenize` (rust_tokenizer/src/corpus/) against upstream's own loop over
sentencepiece, on real text from ../shared/eval-data: same ids, EOS and drops; identical bytes
for 1 and 2 workers and after kill -9 + --resume; Megatron output read by an independent reader
written from docs/formats.md; bad inputs give the documented counts and errors."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from baichuan import Tokenizer
from baichuan.corpus import CorpusError, TokenizeConfig, iter_documents, run_tokenize, summary_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "spm-models" / "baichuan-7b.model"
EVAL = SHARED / "eval-data"

if not MODEL.exists() or not EVAL.is_dir():
    pytest.skip(f"{SHARED} is absent", allow_module_level=True)

spm = pytest.importorskip("sentencepiece")
zstandard = pytest.importorskip("zstandard")

EOS = 2


@pytest.fixture(scope="module")
def sp() -> object:
    return spm.SentencePieceProcessor(model_file=str(MODEL))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(MODEL)


def upstream_docs(paths: list[Path], encode, min_tokens: int = 20, eos: bool = True, errors: str = "ignore"):
    """Upstream Baichuan-7B's DataEngine.load_data, one document per kept line."""
    docs: list[list[int]] = []
    dropped = 0
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        if path.suffix == ".zst":
            import io

            raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
            f = io.TextIOWrapper(raw, encoding="utf-8", errors=errors)
        else:
            f = opener(path, "rt", encoding="utf-8", errors=errors)
        with f:
            for line in f:
                cc = list(encode(line.strip())) + ([EOS] if eos else [])
                if len(cc) < min_tokens:
                    dropped += 1
                    continue
                docs.append(cc)
    return docs, dropped


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real text: C-Eval val CSVs (Chinese), MMLU dev CSVs (English, CRLF inside fields), one as
    .gz and one as .zst, plus a file with invalid UTF-8, NUL bytes and a lone CR."""
    d = tmp_path_factory.mktemp("corpus")
    for i, f in enumerate(sorted((EVAL / "ceval" / "val").glob("*.csv"))[:24]):
        shutil.copy(f, d / f"a{i:02d}_{f.name}")
    for f in sorted((EVAL / "mmlu" / "dev").glob("*.csv"))[:20]:
        shutil.copy(f, d / f"b_{f.name}")
    src = sorted((EVAL / "cmmlu" / "dev").glob("*.csv"))
    (d / "c_gz.csv.gz").write_bytes(gzip.compress(src[0].read_bytes()))
    (d / "c_zst.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(src[1].read_bytes()))
    text = src[2].read_bytes()
    bad = b"\n\xff\xfe broken \xe4\xbd bytes " + text[:200] + b"\x00nul\rcr\r\n"
    (d / "d_bad.txt").write_bytes(text[:3000] + bad + text[3000:6000])
    (d / "e_empty.txt").write_bytes(b"")
    return d


def corpus_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))


def cfg(corpus: Path, out: Path, **kw) -> TokenizeConfig:
    base = dict(tokenizer=str(MODEL), inputs=[str(corpus)], output=str(out), workers=2, shard_tokens=20000)
    base.update(kw)
    return TokenizeConfig(**base)


def read_dir(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ref") / "out"
    m = run_tokenize(cfg(corpus, out, workers=1), progress=False)
    return out, m


def test_round_trip_matches_upstream_loop(corpus: Path, reference, sp, tok) -> None:
    out, m = reference
    files = corpus_files(corpus)
    want, dropped = upstream_docs(files, sp.EncodeAsIds)
    got = [d.tolist() for d in iter_documents(out)]
    assert len(got) == len(want)
    assert got == want
    assert m["counts"]["documents"] == len(want)
    assert m["counts"]["dropped"] == dropped
    assert m["counts"]["tokens"] == sum(map(len, want))
    # also line by line against our own Tokenizer.encode
    ours, _ = upstream_docs(files, tok.encode)
    assert ours == got
    assert len(m["shards"]) > 1 and m["dtype"] == "uint16"
    assert [f["path"] for f in m["inputs"]] == [str(p) for p in files]
    assert m["tokenizer"]["vocab_size"] == 64000 and m["tokenizer"]["eos_id"] == EOS
    import hashlib

    assert m["tokenizer"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    for f, p in zip(m["inputs"], files):
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest() and f["size"] == p.stat().st_size
    # invalid UTF-8: counted in the file that has it (\xff, \xfe, \xe4\xbd: 3 maximal subparts)
    bad = next(f for f in m["inputs"] if f["path"].endswith("d_bad.txt"))
    assert bad["counts"]["invalid_utf8"] == 3
    assert m["counts"]["invalid_utf8"] == 3
    empty = next(f for f in m["inputs"] if f["path"].endswith("e_empty.txt"))
    assert empty["status"] == "ok" and empty["counts"]["bytes"] == 0
    assert "TOTAL" in summary_table(m)


def test_replace_policy_and_no_eos(corpus: Path, tmp_path: Path, sp) -> None:
    files = [corpus / "d_bad.txt"]
    m = run_tokenize(cfg(files[0], tmp_path / "o", invalid_utf8="replace", append_eos=False, min_tokens=5), progress=False)
    want, dropped = upstream_docs(files, sp.EncodeAsIds, min_tokens=5, eos=False, errors="replace")
    assert [d.tolist() for d in iter_documents(tmp_path / "o")] == want
    assert m["counts"]["dropped"] == dropped and m["counts"]["invalid_utf8"] == 3


def test_doc_per_file(corpus: Path, tmp_path: Path, sp) -> None:
    files = corpus_files(corpus)[:3]
    m = run_tokenize(cfg(corpus, tmp_path / "o", doc_per="file", inputs=[str(f) for f in files]), progress=False)
    want = [sp.EncodeAsIds(f.read_text(encoding="utf-8", errors="ignore").strip()) + [EOS] for f in files]
    assert [d.tolist() for d in iter_documents(tmp_path / "o")] == want
    assert m["counts"]["documents"] == 3


def test_jsonl_text_field(tmp_path: Path, sp) -> None:
    src = EVAL / "agieval" / "v1" / "gaokao-biology.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()[:60]
    extra = ["not json", "", "[1, 2]", '{"question": 7}', '{"other": "x"}']
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines + extra) + "\n").encode()))
    m = run_tokenize(cfg(tmp_path / "in.jsonl.gz", tmp_path / "o", text_field="question", min_tokens=1), progress=False)
    want = [sp.EncodeAsIds(json.loads(l)["question"].strip()) + [EOS] for l in lines]
    assert [d.tolist() for d in iter_documents(tmp_path / "o")] == want
    f = m["inputs"][0]
    assert f["jsonl"] and f["counts"]["bad_json"] == 4 and f["counts"]["empty"] == 1
    assert f["first_bad_json"].startswith(f"byte {sum(len(l.encode()) + 1 for l in lines)}: invalid JSON")


def test_workers_do_not_change_bytes(corpus: Path, reference, tmp_path: Path) -> None:
    ref_out, _ = reference
    run_tokenize(cfg(corpus, tmp_path / "w2", workers=2, chunk_bytes=4096), progress=False)
    assert read_dir(tmp_path / "w2") == read_dir(ref_out)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "baichuan", "tokenize", "--quiet", *args]


def _wait_for_checkpoints(p: subprocess.Popen, state: Path, count: int) -> None:
    """Waits until the job has written ``progress.json`` ``count`` more times (or has ended)."""
    seen = 0
    last = None
    deadline = time.monotonic() + 60
    while p.poll() is None and seen < count and time.monotonic() < deadline:
        try:
            m = state.stat().st_mtime_ns
        except FileNotFoundError:
            m = None
        if m is not None and m != last:
            seen += 1
            last = m
        time.sleep(0.002)


def _assert_complete_shards_only(out: Path) -> None:
    """Whatever is on disk after a kill: a shard under its final name is complete, no manifest."""
    for f in out.glob("shard-*.idx"):
        offs = np.fromfile(f, dtype="<u8")
        assert offs[0] == 0 and (out / f.name.replace(".idx", ".bin")).stat().st_size == offs[-1] * 2
    assert not (out / "manifest.json").exists()


def test_kill9_and_resume_is_byte_identical(corpus: Path, tmp_path: Path) -> None:
    """SIGKILL at exact checkpoints (the job kills itself right after its Nth progress.json, so the
    test does not race the encoder however fast it is), then once at a random moment, resuming with
    alternating worker counts each time: the result equals an uninterrupted run byte for byte."""
    ref = tmp_path / "ref"
    run_tokenize(cfg(corpus, ref, shard_tokens=3000), progress=False)
    out = tmp_path / "k"
    args = ["--tokenizer", str(MODEL), "--input", str(corpus), "--output", str(out), "--shard-size", "3000"]
    rng = random.Random(1234)
    for attempt, n in enumerate([1, 2, 5, 3, 4]):
        workers = ["--workers", str(1 + attempt % 2)]  # resuming with another worker count is fine
        resume = ["--resume"] if attempt else []
        p = subprocess.run(_cli(*args, *workers, *resume, "--debug-kill-after-checkpoints", str(n)),
                           capture_output=True, timeout=120)
        assert p.returncode == -signal.SIGKILL, p.stderr.decode()
        _assert_complete_shards_only(out)
    # one more kill from outside, at a random moment (the job may also win the race and finish)
    p = subprocess.Popen(_cli(*args, "--workers", "2", "--resume"), stderr=subprocess.PIPE)
    time.sleep(rng.uniform(0.0, 0.5))
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()
    if p.returncode == -signal.SIGKILL and not (out / "manifest.json").exists():
        _assert_complete_shards_only(out)
    p = subprocess.run(_cli(*args, "--workers", "2", "--resume"), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert read_dir(out) == read_dir(ref)


def test_refuses_to_mix_jobs(corpus: Path, reference, tmp_path: Path) -> None:
    ref_out, m = reference
    out = tmp_path / "o"
    shutil.copytree(ref_out, out)
    with pytest.raises(CorpusError, match="already holds a finished job"):
        run_tokenize(cfg(corpus, out), progress=False)
    assert run_tokenize(cfg(corpus, out, resume=True), progress=False) == m  # finished: nothing to do
    with pytest.raises(CorpusError, match="other inputs or options"):
        run_tokenize(cfg(corpus, out, resume=True, min_tokens=3), progress=False)


# ---------------------------------------------------------------- Megatron, independent reader


class MegatronIndexedDataset:
    """A strict reader of Megatron's MMIDIDX .idx/.bin pair written from
    docs/formats.md, "Megatron byte layout" (not from our writer)."""

    DTYPES = {1: "<u1", 2: "<i1", 3: "<i2", 4: "<i4", 5: "<i8", 8: "<u2"}

    def __init__(self, prefix: Path) -> None:
        idx = Path(f"{prefix}.idx").read_bytes()
        self.bin = Path(f"{prefix}.bin").read_bytes()
        assert idx[:9] == b"MMIDIDX\x00\x00"
        (version,) = struct.unpack_from("<Q", idx, 9)
        assert version == 1
        self.code = idx[17]
        self.dtype = np.dtype(self.DTYPES[self.code])
        n, d = struct.unpack_from("<QQ", idx, 18)
        assert len(idx) == 34 + 12 * n + 8 * d, "trailing or missing bytes in .idx"
        self.lengths = np.frombuffer(idx, "<i4", n, 34)
        self.pointers = np.frombuffer(idx, "<i8", n, 34 + 4 * n)
        self.doc_index = np.frombuffer(idx, "<i8", d, 34 + 12 * n)
        assert (self.lengths >= 0).all()
        size = self.dtype.itemsize
        if n:
            assert self.pointers[0] == 0
            assert (self.pointers[1:] == self.pointers[:-1] + self.lengths[:-1] * size).all()
            assert self.pointers[-1] + self.lengths[-1] * size == len(self.bin)
        assert self.doc_index[0] == 0 and self.doc_index[-1] == n and (np.diff(self.doc_index) >= 0).all()

    def sequence(self, i: int) -> np.ndarray:
        return np.frombuffer(self.bin, self.dtype, int(self.lengths[i]), int(self.pointers[i]))

    def documents(self) -> list[list[int]]:
        return [
            [t for s in range(self.doc_index[j], self.doc_index[j + 1]) for t in self.sequence(s).tolist()]
            for j in range(len(self.doc_index) - 1)
        ]


def test_megatron_output_read_independently(corpus: Path, reference, tmp_path: Path) -> None:
    ref_out, _ = reference
    out = tmp_path / "mg"
    m = run_tokenize(cfg(corpus, out, format="megatron"), progress=False)
    ds = MegatronIndexedDataset(out / "corpus_text_document")
    assert ds.code == 8  # vocab 64000 < 65500: uint16
    docs = ds.documents()
    assert docs == [d.tolist() for d in iter_documents(ref_out)]
    assert all(d[-1] == EOS for d in docs)
    assert m["megatron"]["sequences"] == len(docs) == m["counts"]["documents"]
    names = sorted(p.name for p in out.iterdir())
    assert names == [".tokenize.lock", "corpus_text_document.bin", "corpus_text_document.idx", "manifest.json"]
    # resume of the Megatron writer after kill -9
    ref = tmp_path / "mgref"
    run_tokenize(cfg(corpus, ref, format="megatron", shard_tokens=5000), progress=False)
    out2 = tmp_path / "mg2"
    args = ["--tokenizer", str(MODEL), "--input", str(corpus), "--output", str(out2), "--workers", "2",
            "--format", "megatron", "--shard-size", "5000"]
    for i, n in enumerate((2, 5)):  # SIGKILL right after the job's 2nd, then 5th checkpoint
        p = subprocess.run(_cli(*args, *(["--resume"] if i else []), "--debug-kill-after-checkpoints", str(n)),
                           capture_output=True, timeout=120)
        assert p.returncode == -signal.SIGKILL, p.stderr.decode()
        assert not (out2 / "manifest.json").exists()
    subprocess.run(_cli(*args, "--resume"), check=True)
    assert read_dir(out2) == read_dir(ref)
    assert [d.tolist() for d in iter_documents(out2)] == docs


def test_one_job_per_directory(corpus: Path, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".tokenize.lock", "w") as held:  # as another running job holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CorpusError, match="another tokenize job is writing here"):
            run_tokenize(cfg(corpus, out), progress=False)
    assert not (out / "progress.json").exists()
    run_tokenize(cfg(corpus, out), progress=False)  # released (as when that process dies)


def test_ctrl_c_stops_cleanly_and_resumes(corpus: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    run_tokenize(cfg(corpus, ref, shard_tokens=5000), progress=False)
    out = tmp_path / "o"
    args = ["--tokenizer", str(MODEL), "--input", str(corpus), "--output", str(out), "--shard-size", "5000"]
    p = subprocess.Popen(_cli(*args), stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoints(p, out / "progress.json", 2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "--resume" in err and "Traceback" not in err
    subprocess.run(_cli(*args, "--resume"), check=True)
    assert read_dir(out) == read_dir(ref)


# ---------------------------------------------------------------- bad inputs


def test_unreadable_files_error_or_skip(corpus: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(corpus_files(corpus)[0], d / "a.csv")
    good = (d / "a.csv").read_bytes()
    (d / "b.txt.gz").write_bytes(gzip.compress(good)[:-200])  # truncated gzip: fails while reading
    with pytest.raises(OSError, match="b.txt.gz"):
        run_tokenize(cfg(d, tmp_path / "o1"), progress=False)
    os.symlink(d / "missing", d / "c.txt")  # dangling link: fails at open
    with pytest.raises(OSError, match="c.txt"):
        run_tokenize(cfg(d, tmp_path / "o1", overwrite=True), progress=False)
    (d / "d.txt.zst").write_bytes(b"this is not zstd at all")
    m = run_tokenize(cfg(d, tmp_path / "o2", skip_bad_files=True), progress=False)
    status = {Path(f["path"]).name: (f["status"], f["error"]) for f in m["inputs"]}
    assert status["a.csv"] == ("ok", None)
    for name in ("b.txt.gz", "c.txt", "d.txt.zst"):
        assert status[name][0] == "skipped" and name in status[name][1]
    assert m["counts"]["bad_files"] == 3
    # a missing input or a pattern matching nothing is an error naming it (before any work)
    with pytest.raises(CorpusError, match="nope"):
        run_tokenize(cfg(tmp_path / "nope", tmp_path / "o3"), progress=False)
    with pytest.raises(CorpusError, match=r"\*\.none"):
        run_tokenize(cfg(d, tmp_path / "o4", inputs=[str(d / "*.none")]), progress=False)


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    r = subprocess.run(_cli("--tokenizer", str(MODEL), "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")),
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(_cli("--tokenizer", str(tmp_path / "x.model"), "--input", str(MODEL), "--output", str(tmp_path / "o")),
                       capture_output=True, text=True)
    assert r.returncode == 2 and "x.model" in r.stderr and "Traceback" not in r.stderr


def test_globs_and_directory_order(corpus: Path, tmp_path: Path) -> None:
    m = run_tokenize(cfg(corpus, tmp_path / "o", inputs=[str(corpus / "b_*.csv"), str(corpus / "a0*")]), progress=False)
    names = [Path(f["path"]).name for f in m["inputs"]]
    assert names == sorted(p.name for p in corpus.glob("b_*.csv")) + sorted(p.name for p in corpus.glob("a0*"))


# ---------------------------------------------------------------- fuzz: random bytes vs upstream's loop

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = [b"\n", b"\r\n", b"\r", b" ", b"\t", b"\x00", b"\xff", b"\xe4\xbd", b"\xe4\xbd\xa0", b"\x1c",
           "\u3000".encode(), "\u2028".encode(), "\x85".encode(), "\ufeff".encode(), "你好，世界。".encode(),
           b"Hello world 123 ", b"<p>x</p>", "１２３".encode(), "🦙".encode(), b"a" * 30]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(_PIECES), max_size=120), workers=st.sampled_from([1, 2]),
       gz=st.booleans(), policy=st.sampled_from(["ignore", "replace"]))
def test_fuzz_random_bytes_match_upstream(parts: list[bytes], workers: int, gz: bool, policy: str,
                                          tmp_path_factory: pytest.TempPathFactory, sp) -> None:
    d = tmp_path_factory.mktemp("fz")
    data = b"".join(parts)
    # (\r, invalid bytes, \n) is one line break for Python, which drops the bytes before splitting;
    # we split first: only an extra empty document, dropped with min_tokens >= 2 (its count differs).
    p = d / ("in.txt.gz" if gz else "in.txt")
    p.write_bytes(gzip.compress(data) if gz else data)
    m = run_tokenize(cfg(p, d / "o", workers=workers, min_tokens=2, chunk_bytes=64, invalid_utf8=policy,
                         shard_tokens=400), progress=False)
    want, _ = upstream_docs([p], sp.EncodeAsIds, min_tokens=2, errors=policy)
    assert [x.tolist() for x in iter_documents(d / "o")] == want
    assert m["counts"]["bytes"] == len(data)


def test_output_inside_inputs_is_never_read(corpus: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    shutil.copytree(corpus, d)
    run_tokenize(cfg(d, d / "out", inputs=[str(p) for p in sorted(d.glob("a0*"))]), progress=False)
    # walking the input directory leaves the output directory out (the job differs only by that)
    with pytest.raises(CorpusError, match=r"holds a finished job with other inputs or options: 10 input files then, 48 now"):
        run_tokenize(cfg(d, d / "out", resume=True), progress=False)
    # a text file named inside the output directory is refused
    (d / "out" / "notes.txt").write_text("a note the user keeps next to the shards\n")
    with pytest.raises(CorpusError, match="inside the output directory"):
        run_tokenize(cfg(d, d / "out", inputs=[str(d / "out" / "notes.txt")], resume=True), progress=False)


def test_progress_counters_and_line(corpus: Path, tmp_path: Path) -> None:
    import io

    from baichuan import _tokenizer
    from baichuan.corpus import ProgressLine

    job = _tokenizer.CorpusJob(cfg(corpus, tmp_path / "o").to_json())
    job.start()
    assert job.wait(120.0)
    m = json.loads(job.result())
    p = job.progress()
    assert p["documents"] == m["counts"]["documents"] and p["tokens"] == m["counts"]["tokens"]
    assert p["dropped"] == m["counts"]["dropped"] and p["text_bytes"] == m["counts"]["bytes"]
    assert p["files_done"] == p["files_total"] == m["counts"]["files"]
    assert p["raw_bytes_read"] == p["raw_bytes_total"] == sum(f["size"] for f in m["inputs"])
    buf = io.StringIO()
    line = ProgressLine(buf, interval=0.0)
    line.update({k: 0 for k in p}, force=True)
    line.update(p, force=True)
    out = buf.getvalue().splitlines()
    assert out[0].startswith("tokenize   0.0%") and "100.0%" in out[1] and "tok/s" in out[1] and "ETA" in out[1]
    with pytest.raises(RuntimeError, match="already started"):
        job.start()
    with pytest.raises(CorpusError, match="unknown field"):
        _tokenizer.CorpusJob('{"tokenizer": "t", "inputs": ["x"], "output": "o", "bogus": 1}')


def test_plain_output_has_no_partition_or_holdout(reference) -> None:
    ref_out, m = reference
    assert "partition" not in m and "holdout" not in m and "partition" not in m["options"]
    assert not any("holdout" in k for k in m["counts"]) and not (ref_out / "holdout").exists()


def test_partitions_of_mixed_inputs_merge_to_the_reference(corpus: Path, reference, tmp_path: Path) -> None:
    """gzip, zstd, invalid UTF-8, an empty file: 4 byte-balanced partitions, merged, are the
    single run byte for byte (tests/test_partition_merge.py tests the command line)."""
    from baichuan.corpus import run_merge

    ref_out, _ = reference
    parts = [tmp_path / f"p{i}" for i in range(4)]
    for i, p in enumerate(parts):
        m = run_tokenize(cfg(corpus, p, partition=f"{i}/4"), progress=False)
        assert m["partition"]["index"] == i and m["partition"]["count"] == 4
    run_merge(parts[::-1], tmp_path / "merged", progress=False)
    want = {k: v for k, v in read_dir(ref_out).items() if k != ".tokenize.lock"}
    assert read_dir(tmp_path / "merged") == want
