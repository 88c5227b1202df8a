"""Raw text is read by one implementation (issue 11 §1): `train --data TEXT_DIR` (TextDirSource)
and `train-tokenizer` read documents through the Rust reader of `baichuan tokenize`
(`_tokenizer.DocumentReader`, `_tokenizer.discover_inputs`). On a text directory holding .gz,
.zst, .jsonl, CRLF, `\\r`-only and invalid UTF-8 files: the documents the trainer's text source
yields, tokenized, equal `baichuan tokenize`'s documents; the sentences handed to sentencepiece's
trainer are those same documents."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from baichuan.corpus import TokenizeConfig, iter_documents, run_tokenize
from baichuan.data import TextDirSource, list_text_files
from helpers import LLAMA2_SPM as SPM
from helpers import check_resume_equal

WORDS = ("the quick brown fox jumps over a lazy dog while seven bright stars watch "
         "from distant hills and rivers run toward the silent sea").split()


def sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def make_mixed_dir(d: Path) -> list[str]:
    """The directory, and the documents (stripped texts, in tokenize's order) it holds by hand."""
    zstandard = pytest.importorskip("zstandard")
    d.mkdir(parents=True)
    docs: list[str] = []
    # a.txt.gz: plain lines, compressed (the old Python reader trained on the compressed bytes)
    a = [sentence(i, 25) for i in range(6)] + ["short line"]
    (d / "a.txt.gz").write_bytes(gzip.compress(("\n".join(a) + "\n").encode()))
    docs += a
    # b.txt.zst
    b = [sentence(100 + i, 30) for i in range(5)]
    (d / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(b)).encode()))
    docs += b
    # c.jsonl: a multi-line text, a blank line and a line that is not a document (bad JSON) skipped
    c = [sentence(200, 22) + "\n" + sentence(201, 22), "  " + sentence(202, 40) + "  "]
    lines = [json.dumps({"text": c[0]}), "", "{not json", json.dumps({"text": c[1], "id": 3})]
    (d / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs += [c[0], c[1].strip()]
    # d_crlf.txt: CRLF line ends, and an empty line
    dd = [sentence(300 + i, 24) for i in range(4)]
    (d / "d_crlf.txt").write_bytes(("\r\n".join(dd[:2]) + "\r\n\r\n" + "\r\n".join(dd[2:]) + "\r\n").encode())
    docs += dd[:2] + [""] + dd[2:]
    # e_cr.txt: lone \r line ends (old Mac; the old Python reader made it one document)
    e = [sentence(400 + i, 26) for i in range(4)]
    (d / "e_cr.txt").write_bytes("\r".join(e).encode())
    docs += e
    # f_bad.txt: invalid UTF-8 inside lines (dropped, tokenize's default)
    f_lines = [sentence(500, 21).encode() + b"\xff\xfe" + b" tail", b"\xe4\xbd" + sentence(501, 23).encode()]
    (d / "f_bad.txt").write_bytes(b"\n".join(f_lines) + b"\n")
    docs += [sentence(500, 21) + " tail", sentence(501, 23)]
    # hidden files are not read
    (d / ".hidden.txt").write_text("never read\n")
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not SPM.is_file():
        pytest.skip(f"{SPM} is absent")
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("one_reader")
    texts = make_mixed_dir(root / "text")
    shards = {}
    for min_tokens in (20, 1):
        out = root / f"shards-{min_tokens}"
        run_tokenize(TokenizeConfig(tokenizer=str(SPM), inputs=[str(root / "text")], output=str(out), workers=2,
                                    min_tokens=min_tokens), progress=False, warn=lambda w: None)
        shards[min_tokens] = [d.tolist() for d in iter_documents(out)]
    sp = spm.SentencePieceProcessor(model_file=str(SPM))
    return {"root": root, "texts": texts, "shards": shards, "encode": lambda ts: [sp.encode(t) for t in ts]}


def test_tokenize_reads_the_directory_as_written_by_hand(corpus: dict) -> None:
    """The reference itself: `baichuan tokenize` (min-tokens 1) has one document per text above."""
    enc = corpus["encode"]
    assert corpus["shards"][1] == [ids + [2] for ids in enc(corpus["texts"])]


def test_text_source_documents_equal_tokenize_documents(corpus: dict) -> None:
    text = corpus["root"] / "text"
    files = list_text_files(text)
    assert [f.name for f in files] == ["a.txt.gz", "b.txt.zst", "c.jsonl", "d_crlf.txt", "e_cr.txt", "f_bad.txt"]
    enc = corpus["encode"]
    src = TextDirSource(files, enc, 2, seq_len=64, micro_batch=2, rank=0, world_size=1, lines_per_batch=3)
    try:
        # the documents the trainer's text source yields (one epoch), tokenized with its rule
        docs = []
        for batch, (epoch, _, _) in src._read_lines({"epoch": 0, "file": 0, "offset": 0}):
            if epoch > 0:  # the position after the last file: the next epoch
                break
            for (_, ep, _, _), ids in zip(batch, enc([b[0] for b in batch])):
                if ep == 0 and len(ids) + 1 >= src.min_tokens:
                    docs.append(ids + [2])
        want = corpus["shards"][20]
        assert docs == want
        # and the packed stream it trains on is those documents, epoch after epoch
        got = np.concatenate([src.next_batch().reshape(-1) for _ in range(12)])
    finally:
        src.close()
    flat = np.concatenate([np.asarray(d) for d in want])
    np.testing.assert_array_equal(got, np.tile(flat, len(got) // len(flat) + 2)[: len(got)])


def test_text_source_resumes_exactly_inside_compressed_files(corpus: dict) -> None:
    files = list_text_files(corpus["root"] / "text")
    enc = corpus["encode"]
    check_resume_equal(
        lambda state: TextDirSource(files, enc, 2, 29, 1, 0, 1, state=state, lines_per_batch=2 if state is None else 5),
        stops=(1, 3, 8, 17, 30), total=40,
    )


def test_tokenizer_trainer_gets_the_same_documents(corpus: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    spm = pytest.importorskip("sentencepiece")
    from baichuan.tokenizer_training import TrainTokenizerConfig, train_tokenizer

    handed: list[str] = []

    class Stop(Exception):
        pass

    def fake_train(*, sentence_iterator, **kwargs):
        handed.extend(sentence_iterator)
        raise Stop

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", fake_train)
    with pytest.raises(Stop):
        train_tokenizer(TrainTokenizerConfig(inputs=[str(corpus["root"] / "text")], model_prefix=str(corpus["root"] / "m")),
                        warn=lambda w: None)
    # the same documents as tokenize's (every one, min-tokens 1), less the empty one
    assert handed == [t for t in corpus["texts"] if t]
    enc = corpus["encode"]
    assert [ids + [2] for ids in enc(handed)] == [d for d in corpus["shards"][1] if d != [2]]


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    from baichuan.data import DataError

    d = tmp_path / "t"
    d.mkdir()
    (d / "a.txt.gz").write_bytes(b"plain text under a .gz name\n")
    src = TextDirSource(list_text_files(d), lambda ts: [[5] * 30 for _ in ts], 2, 9, 1, 0, 1)
    try:
        with pytest.raises(DataError, match=r"a\.txt\.gz: cannot read it: invalid gzip header"):
            src.next_batch()
    finally:
        src.close()
