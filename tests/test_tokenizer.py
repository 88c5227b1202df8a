"""The tokenizer against sentencepiece 0.2.3 on the spec's test vectors, plus the Python API,
errors and threading (encode_batch == encode, GIL released)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from baichuan import Tokenizer, TokenizerError
from tokenizer_corpus import BPE_MODELS, MODELS_DIR, UNIGRAM_MODELS, model_path

spm = pytest.importorskip("sentencepiece")

if not MODELS_DIR.is_dir():
    pytest.skip(f"{MODELS_DIR} is absent", allow_module_level=True)


_cache: dict[str, tuple[Tokenizer, object]] = {}


def pair(name: str) -> tuple[Tokenizer, object]:
    if name not in _cache:
        path = model_path(name)
        _cache[name] = (Tokenizer.from_file(path), spm.SentencePieceProcessor(model_file=str(path)))
    return _cache[name]


# Hand-written edge cases (the spec's vectors and more); compared with sentencepiece on every model.
EDGE_CASES: list[str | bytes] = [
    "", " ", "   ", "\t", "\n", "\r\n", "a\r\nb", "\t\tx", "x" * 12, "Hello", " Hello", "  Hello",
    "Hello ", "Hello  world   foo", "   lead and trail   ", "ＡＢＣ", "a\xa0b", "a\u3000b", "a\u2028b",
    "ﬁne", "𝔘", "ｶ", "ｶﾞ", "½", "①②③", "１２３", "３．１４", "(（)）", "～~", "KÅ", "e\u0301",
    "\x01\x02a", "\x01", "\u200b", "\ufeffx", "\u2581Hello", "a\u2581\u2581b", "a\ufffdb", "a\x00b", "\x00",
    "<SEP>abc<CLS>", "a<br>b", "<s>", "<s>hi</s>", "<unk>", "🦒", "🦙", "👨‍👩‍👧‍👦", "🇨🇳🇺🇸",
    "你好，世界。3.14 e.g. ok...", "一个股", "个股", "可以及", " [i", "[i", "ppp", "a\n    \nb",
    "登鹳雀楼->王之涣\n夜雨寄北->", "Hello  world 12345 🦙", "ｅｌｅｐｈａｎｔ", "２０２３年", "\u3000\u3000全角",
    b"a\xffb", b"a\xe4\xb8b", b"a\xed\xa0\x80b", b"\xe4\xb8", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xff" * 5,
    "<reserved_5>x", "<h1>标题</h1>\n<p>段落</p>", "def f(x):\n\treturn x  # 注释\n",
]


@pytest.mark.parametrize("name", BPE_MODELS)
def test_edge_cases_match_sentencepiece(name: str) -> None:
    tok, sp = pair(name)
    for text in EDGE_CASES:
        ids = sp.encode(text)
        assert tok.encode(text) == ids, (name, text)
        assert tok.decode(ids) == sp.decode(ids), (name, text)
        if isinstance(text, str):
            assert tok.encode_as_pieces(text) == sp.encode(text, out_type=str), (name, text)
            assert tok.normalize(text) == sp.normalize(text), (name, text)


def test_baichuan_vectors_from_spec() -> None:
    tok, _ = pair("baichuan-7b")
    assert tok.encode("ＡＢＣ") == [11803]
    assert tok.encode("½") == [31106, 53, 33358, 54]
    assert tok.encode("<SEP>abc<CLS>") == [31106, 3, 787, 31118, 4]
    assert tok.encode(b"a\xffb") == [650, 632, 584, 582, 31127]
    assert tok.encode("你好，世界。3.14 e.g. ok...") == [
        9875, 31213, 72, 2781, 73, 55, 79, 53, 56, 704, 79, 31122, 79, 9940, 79, 79, 79,
    ]
    assert tok.encode("x" * 12) == [tok.piece_to_id("▁x")] + [tok.piece_to_id("xx")] * 5 + [tok.piece_to_id("x")]
    assert tok.decode(tok.encode("a\r\nb")) == "a \nb"
    assert tok.decode([31106]) == ""


def test_llama_decode_vectors_from_spec() -> None:
    tok, _ = pair("llama2")
    assert tok.decode([29871, 15043]) == " Hello"
    assert tok.decode([259, 15043]) == "  Hello"
    assert tok.decode([1, 15043]) == "Hello"
    assert tok.decode([0, 15043]) == " ⁇  Hello"
    assert tok.decode([0]) == " ⁇ "
    assert tok.decode([35, 15043]) == "  Hello"
    assert tok.decode([229, 153, 132, 29916]) == "▁x"
    assert tok.decode([0xE4 + 3, 0xB8 + 3]) == "\ufffd\ufffd"
    assert tok.decode([0xE4 + 3, 1, 0xB8 + 3, 0xAD + 3]) == "\ufffd" * 3
    assert tok.decode([0xE4 + 3, 0xB8 + 3, 0xAD + 3]) == "中"
    assert tok.decode([]) == ""
    assert tok.decode_to_bytes([15043]) == b"Hello"


def test_real_model_ties() -> None:
    tok, _ = pair("chinese-llama2")
    assert tok.encode("一个股") == [29871, 32002, 32216]
    assert tok.encode("个股") == [29871, 34351]
    tok, _ = pair("internlm-7b")
    assert tok.encode(" [i") == [640, 266]
    assert tok.encode("[i") == [1129]
    assert tok.encode("ppp") == [733, 276]
    assert tok.encode("a\x00b") == [264, 3, 260]  # the NUL piece is made UNUSED and skipped
    assert tok.encode("a\n    \nb") == [264, 7362, 260]


@pytest.mark.parametrize("name", BPE_MODELS)
def test_special_ids_and_pieces(name: str) -> None:
    tok, sp = pair(name)
    assert tok.vocab_size == sp.vocab_size() == len(tok)
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id())
    for i in list(range(0, 300)) + list(range(tok.vocab_size - 50, tok.vocab_size)):
        assert tok.id_to_piece(i) == sp.id_to_piece(i)
        assert tok.piece_to_id(sp.id_to_piece(i)) == sp.piece_to_id(sp.id_to_piece(i))
        assert tok.get_score(i) == pytest.approx(sp.get_score(i), nan_ok=True)
    assert tok.piece_to_id("definitely not a piece ✗✗") == sp.piece_to_id("definitely not a piece ✗✗")
    for bad in (-1, tok.vocab_size, 2**40):
        with pytest.raises(IndexError):
            tok.id_to_piece(bad)
        with pytest.raises(IndexError):
            tok.decode([5, bad])
    assert isinstance(tok.bos_id, int)


def test_batch_equals_single_for_any_thread_count() -> None:
    tok, sp = pair("baichuan-7b")
    texts = [t for t in EDGE_CASES] * 7 + ["中文 and English " * k for k in range(50)]
    single = [tok.encode(t) for t in texts]
    assert single == sp.encode([t if isinstance(t, str) else t for t in texts])
    for n in (None, -1, 0, 1, 2, 3, 8):
        assert tok.encode_batch(texts, num_threads=n) == single, n
    ids, offsets = tok.encode_batch_numpy(texts, num_threads=2)
    assert offsets[0] == 0 and offsets[-1] == len(ids) and len(offsets) == len(texts) + 1
    assert [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))] == single
    assert tok.encode_batch([]) == []
    assert tok.decode_batch(single, num_threads=2) == [tok.decode(s) for s in single]


def test_batch_errors_and_mixed_inputs_on_the_threaded_path() -> None:
    """Big batches take the multi-thread path (texts read up front, blocks converted as they
    finish): str and bytes mixed, a bad item anywhere, and a batch list changed afterwards."""
    tok, _ = pair("baichuan-7b")
    texts: list[str | bytes] = [f"第{i}条 line {i} ☃" for i in range(3000)]
    texts[17] = texts[17].encode()
    texts[2500] = "raw \xff bytes".encode("latin-1")
    single = [tok.encode(t) for t in texts]
    for n in (1, 2, 4):
        assert tok.encode_batch(texts, num_threads=n) == single, n
        ids, offsets = tok.encode_batch_numpy(texts, num_threads=n)
        assert [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))] == single
    for bad_at in (0, 1500, 2999):
        for bad, err in ((5, TypeError), (None, TypeError), ("lone \ud800 surrogate", UnicodeEncodeError)):
            broken = list(texts)
            broken[bad_at] = bad  # type: ignore[call-overload]
            for n in (1, 2):
                with pytest.raises(err):
                    tok.encode_batch(broken, num_threads=n)  # type: ignore[arg-type]
    out = tok.encode_batch(texts, num_threads=2)
    texts.clear()  # the result does not depend on the caller's list afterwards
    assert out == single


def test_batch_survives_the_list_changing_under_it() -> None:
    """While the GIL is released another thread empties and refills the list: the call works
    on the texts it was given (held alive by the call), never on freed memory."""
    tok, _ = pair("baichuan-7b")
    texts = [f"句子 {i} " * (1 + i % 7) for i in range(100_000)]
    expect = tok.encode_batch(list(texts), num_threads=1)
    results: list[list[list[int]]] = []
    worker = threading.Thread(target=lambda: results.append(tok.encode_batch(texts, num_threads=2)))
    worker.start()
    while worker.is_alive():
        texts[:] = ["changed"] * 10
        texts[:] = [f"句子 {i} " * (1 + i % 7) for i in range(100_000)]
    worker.join()
    assert len(results) == 1
    assert results[0] == expect or len(results[0]) in (10, 100_000)


def test_encode_releases_the_gil() -> None:
    tok, _ = pair("llama2")
    text = "中文 text 混合 " * 400_000  # ~6 MB, one line: takes a good fraction of a second
    done = threading.Event()
    took: list[float] = []

    def work() -> None:
        t0 = time.perf_counter()
        tok.encode(text)
        took.append(time.perf_counter() - t0)
        done.set()

    th = threading.Thread(target=work)
    th.start()
    last = time.perf_counter()
    max_gap = 0.0
    while not done.is_set():
        now = time.perf_counter()
        max_gap = max(max_gap, now - last)
        last = now
    th.join()
    # With the GIL held, this loop could not run for the whole encode.
    assert max_gap < took[0] / 2, (max_gap, took)


def test_unigram_models_are_refused() -> None:
    for name in UNIGRAM_MODELS:
        with pytest.raises(TokenizerError, match=r"unsupported model type UNIGRAM") as e:
            Tokenizer.from_file(model_path(name))
        assert name in str(e.value)


def test_missing_file_and_wrong_types(tmp_path: Path) -> None:
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer.from_file(missing)
    with pytest.raises(OSError, match=str(tmp_path.name)):
        Tokenizer.from_file(tmp_path)  # a directory
    with pytest.raises(TypeError):
        Tokenizer.from_file(123)  # type: ignore[arg-type]
    tok, _ = pair("llama2")
    with pytest.raises(TypeError):
        tok.encode(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok.encode_batch(["a", 5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        tok.decode(["a"])  # type: ignore[list-item]


def test_truncated_and_corrupt_models_raise_naming_the_file(tmp_path: Path) -> None:
    data = model_path("llama2").read_bytes()
    import random

    rng = random.Random(1234)
    cuts = sorted({rng.randrange(1, len(data)) for _ in range(40)} | {1, 2, 10, 100, len(data) - 1})
    for cut in cuts:
        p = tmp_path / f"cut{cut}.model"
        p.write_bytes(data[:cut])
        try:
            Tokenizer.from_file(p)
        except TokenizerError as e:
            assert f"cut{cut}.model" in str(e)
            assert "invalid SentencePiece model" in str(e) or "unsupported model type" in str(e)
    for _ in range(40):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        with pytest.raises(TokenizerError, match="<junk>"):
            Tokenizer.from_bytes(junk, origin="<junk>")
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match="empty.model"):
        Tokenizer.from_file(empty)


def test_same_errors_from_the_tokenizer_and_the_corpus_job(tmp_path: Path) -> None:
    """One mapping of Rust errors to Python exceptions (py.rs): a malformed .model is a
    TokenizerError and a missing one a FileNotFoundError, whether `Tokenizer` or the bulk
    `tokenize` job loads it; CorpusError is a TokenizerError."""
    from baichuan import _tokenizer
    from baichuan.corpus import TokenizeConfig

    assert issubclass(_tokenizer.CorpusError, TokenizerError)
    (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"junk junk")
    missing = tmp_path / "missing.model"
    for model, exc in ((bad, TokenizerError), (missing, FileNotFoundError)):
        cfg = TokenizeConfig(inputs=[str(tmp_path / "in.txt")], tokenizer=str(model), output=str(tmp_path / "out"))
        with pytest.raises(exc, match=model.name) as e1:
            Tokenizer.from_file(model)
        job = _tokenizer.CorpusJob(cfg.to_json())
        job.start()
        job.wait(60)
        with pytest.raises(exc, match=model.name) as e2:
            job.result()
        assert type(e1.value) is type(e2.value) is exc
