"""Identity with sentencepiece on the real evaluation data (acceptance item 1): every text field
of ../shared/eval-data (321,095 fields, 23 MB of zh/en text), all of it for each of the eight BPE
models (about 45 s in total on the 2-core box: sentencepiece's batch encode dominates).
`BAICHUAN_CORPUS_STRIDE=N` checks every N-th field only, for a quicker local run."""

from __future__ import annotations

import os

import pytest

from baichuan import Tokenizer
from tokenizer_corpus import BPE_MODELS, EVAL_DIR, MODELS_DIR, eval_texts, model_path

spm = pytest.importorskip("sentencepiece")

if not (MODELS_DIR.is_dir() and EVAL_DIR.is_dir()):
    pytest.skip("../shared/spm-models or ../shared/eval-data is absent", allow_module_level=True)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts = eval_texts()
    assert len(texts) > 300_000
    return texts


@pytest.mark.parametrize("name", BPE_MODELS)
def test_encode_decode_identity_on_eval_data(name: str, corpus: list[str]) -> None:
    stride = max(1, int(os.environ.get("BAICHUAN_CORPUS_STRIDE", "1")))
    texts = corpus[::stride]
    sp = spm.SentencePieceProcessor(model_file=str(model_path(name)))
    tok = Tokenizer.from_file(model_path(name))
    ref = sp.encode(texts)
    ours = tok.encode_batch(texts)
    bad = [i for i, (a, b) in enumerate(zip(ref, ours, strict=True)) if a != b]
    assert not bad, f"{name}: {len(bad)} of {len(texts)} differ; first: {texts[bad[0]][:200]!r}"
    ref_text = sp.decode(ref)
    our_text = tok.decode_batch(ref)
    bad = [i for i, (a, b) in enumerate(zip(ref_text, our_text, strict=True)) if a != b]
    assert not bad, f"{name}: decode differs on {len(bad)} texts; first ids {ref[bad[0]][:50]}"
