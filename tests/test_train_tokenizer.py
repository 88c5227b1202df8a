"""`baichuan train-tokenizer`: the recipe equals the trainer_spec/normalizer_spec recorded in
Baichuan-7B's tokenizer.model; a model trained by sentencepiece on a few MB of real text loads in
sentencepiece and in our tokenizer and encodes identically; the sample corpus runs through both
commands (the demo's flow)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from baichuan import Tokenizer
from baichuan.cli import main
from baichuan.corpus import TokenizeConfig, iter_documents, run_tokenize
from baichuan.sample_corpus import write_sample_corpus
from baichuan.tokenizer_training import (
    BAICHUAN_RESERVED,
    BAICHUAN_SYMBOLS,
    TrainTokenizerConfig,
    reserved_symbols,
    train_tokenizer,
)

spm = pytest.importorskip("sentencepiece")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "spm-models" / "baichuan-7b.model"
EVAL = SHARED / "eval-data"


def _need_shared() -> None:
    if not MODEL.exists() or not EVAL.is_dir():
        pytest.skip(f"{SHARED} is absent")


def test_recipe_is_baichuan_7b_trainer_spec() -> None:
    _need_shared()
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(MODEL.read_bytes())
    ts, ns = m.trainer_spec, m.normalizer_spec
    kw = TrainTokenizerConfig(inputs=["x"], model_prefix="p").trainer_kwargs()
    assert kw.pop("model_type") == "bpe" and ts.model_type == pb.TrainerSpec.BPE
    assert kw.pop("normalization_rule_name") == ns.name == "nmt_nfkc"
    assert kw.pop("add_dummy_prefix") == ns.add_dummy_prefix
    assert kw.pop("remove_extra_whitespaces") == ns.remove_extra_whitespaces
    kw.pop("num_threads")  # the machine's cores, not the recorded 120
    symbols = kw.pop("user_defined_symbols")
    recorded = list(ts.user_defined_symbols)
    # the only difference: the recorded <LF>/<tab> became real "\n"/"\t" pieces in the released model
    assert [{"<LF>": "\n", "<tab>": "\t"}.get(s, s) for s in recorded] == symbols
    released = [p.piece for p in m.pieces if p.type == pb.ModelProto.SentencePiece.USER_DEFINED]
    assert released == symbols == list(BAICHUAN_SYMBOLS) + reserved_symbols(BAICHUAN_RESERVED)
    for key, value in kw.items():
        assert getattr(ts, key) == value, key


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 8000-piece model trained with the recipe on ~3.6 MB of real text (C-Eval test, MMLU dev)."""
    _need_shared()
    spm.set_min_log_level(2)
    d = tmp_path_factory.mktemp("trained")
    # one input compressed, to go through the same readers as tokenize
    src = sorted((EVAL / "mmlu" / "dev").glob("*.csv"))
    (d / "mmlu_dev.csv.gz").write_bytes(gzip.compress(b"".join(p.read_bytes() for p in src)))
    cfg = TrainTokenizerConfig(
        inputs=[str(EVAL / "ceval" / "test"), str(d / "mmlu_dev.csv.gz")],
        model_prefix=str(d / "tok"),
        vocab_size=8000,
        character_coverage=0.9995,
        input_sentence_size=200_000,
    )
    r = train_tokenizer(cfg)
    assert r.vocab_size == 8000 and r.sentences > 10_000
    return r.model_path


def test_trained_model_loads_and_encodes_identically(trained: Path) -> None:
    from tokenizer_corpus import eval_texts

    sp = spm.SentencePieceProcessor(model_file=str(trained))
    ours = Tokenizer.from_file(trained)
    assert ours.vocab_size == sp.get_piece_size() == 8000
    assert [ours.id_to_piece(i) for i in range(8000)] == [sp.id_to_piece(i) for i in range(8000)]
    assert (ours.unk_id, ours.bos_id, ours.eos_id) == (0, 1, 2)
    assert ours.id_to_piece(5) == "\n" and ours.id_to_piece(6) == "\t"
    texts = eval_texts()[::7]  # every 7th text field of all the evaluation data (~4 MB of it)
    texts += ["a\nb\tc  d", "数字１２３，标点。", "<p>hi</p><reserved_7>", "🦙 emoji and \x00 NUL", "  lead", ""]
    for t in texts:
        assert ours.encode(t) == sp.encode(t), t[:80]
    assert ours.encode_batch(texts, num_threads=2) == [sp.encode(t) for t in texts]
    sample = texts[:500]
    assert [ours.decode(sp.encode(t)) for t in sample] == [sp.decode(sp.encode(t)) for t in sample]


def test_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _need_shared()
    src = str(EVAL / "ceval" / "val")
    rc = main(["train-tokenizer", "--input", src, "--model-prefix", str(tmp_path / "m"), "--vocab-size", "5000",
               "--character-coverage", "0.999", "--input-sentence-size", "800", "--reserved", "10",
               "--user-defined-symbols", "<doc>,</doc>"])
    assert rc == 0, capsys.readouterr().err
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    n = len(BAICHUAN_SYMBOLS)
    assert [sp.id_to_piece(i) for i in (3 + n, 4 + n, 5 + n, 14 + n)] == ["<doc>", "</doc>", "<reserved_0>", "<reserved_9>"]
    assert sp.get_piece_size() == 5000 and (tmp_path / "m.vocab").read_text(encoding="utf-8").startswith("<unk>\t0\n")
    # a vocabulary too small for character_coverage 1.0: sentencepiece's message, no traceback
    rc = main(["train-tokenizer", "--input", src, "--model-prefix", str(tmp_path / "x"), "--vocab-size", "1000"])
    err = capsys.readouterr().err
    assert rc == 2 and "Vocabulary size is smaller than required_chars" in err
    rc = main(["train-tokenizer", "--input", str(tmp_path / "nope"), "--model-prefix", str(tmp_path / "y")])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_sample_corpus_train_then_tokenize(tmp_path: Path) -> None:
    """The demo's flow: sample corpus -> train-tokenizer (small vocab) -> tokenize."""
    spm.set_min_log_level(2)
    c = write_sample_corpus(tmp_path / "corpus", max_bytes=300_000)
    assert c.bytes > 250_000 and {p.name for p in c.files} >= {"project_zh.txt", "stdlib_docstrings.txt"}
    again = write_sample_corpus(tmp_path / "corpus2", max_bytes=300_000)
    assert [p.read_bytes() for p in c.files] == [p.read_bytes() for p in again.files]  # deterministic
    r = train_tokenizer(TrainTokenizerConfig(inputs=[str(c.directory)], model_prefix=str(tmp_path / "tok"),
                                             vocab_size=3000, character_coverage=0.9995))
    m = run_tokenize(TokenizeConfig(tokenizer=str(r.model_path), inputs=[str(c.directory)],
                                    output=str(tmp_path / "shards"), workers=2), progress=False)
    assert m["counts"]["documents"] > 1000 and m["counts"]["files"] == 4
    sp = spm.SentencePieceProcessor(model_file=str(r.model_path))
    texts: list[str] = []
    for p in sorted(c.files):
        if p.name.endswith(".jsonl.gz"):
            texts += [json.loads(l)["text"] for l in gzip.decompress(p.read_bytes()).decode().splitlines()]
        else:
            texts += p.read_text(encoding="utf-8").splitlines()
    want = [ids + [2] for ids in (sp.encode(t.strip()) for t in texts) if len(ids) + 1 >= 20]
    assert [d.tolist() for d in iter_documents(tmp_path / "shards")] == want
