"""Property tests (hypothesis): ours == sentencepiece for encode, encode_as_pieces, normalize and
decode on adversarial Unicode, raw bytes, random id sequences and very long lines, for all eight
BPE models."""

from __future__ import annotations

import random

import pytest

from baichuan import Tokenizer
from tokenizer_corpus import BPE_MODELS, MODELS_DIR, model_path

spm = pytest.importorskip("sentencepiece")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

if not MODELS_DIR.is_dir():
    pytest.skip(f"{MODELS_DIR} is absent", allow_module_level=True)

PAIRS = {
    name: (Tokenizer.from_file(model_path(name)), spm.SentencePieceProcessor(model_file=str(model_path(name))))
    for name in BPE_MODELS
}

# Characters chosen to hit every normalizer/BPE corner: combining marks, full-width and
# half-width forms, NBSP / ideographic / other spaces, literal ▁, emoji with ZWJ, variation
# selectors and skin tones, flags, control characters, CR/LF/TAB, digits (user-defined in
# Baichuan), U+FFFD, BOM, ligatures, math alphanumerics, CJK and Hangul.
ADVERSARIAL = (
    [chr(c) for c in range(0x00, 0x21)] + ["\x7f", "\x85", "\xa0", "\xad"]
    + [chr(c) for c in range(0x300, 0x310)] + ["\u0301", "\u20dd", "\u3099", "\u309a"]
    + [chr(c) for c in range(0xFF01, 0xFF20)] + ["ｶ", "ﾞ", "ﾟ", "ｱ", "ﾝ", "￥", "～", "　"]
    + ["\u2000", "\u2002", "\u2009", "\u200b", "\u200c", "\u200d", "\u200e", "\u2028", "\u2029", "\u202f", "\u205f"]
    + ["\u2581", "\u2581\u2581", "\ufeff", "\ufffd", "\ufe0f", "\u061c", "\u1680"]
    + ["👨", "👩", "👧", "🏽", "❤", "🦒", "🦙", "🇨", "🇳", "😀", "👍🏽", "👨‍👩‍👧"]
    + ["ﬁ", "ﬂ", "𝔘", "𝕏", "½", "①", "㈱", "㎏", "Å", "K", "ǅ", "ß", "İ"]
    + list("0123456789") + list("０１２３") + ["。", "，", "、", "；", "：", "？", "！", "（", "）", "《", "》"]
    + list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动")
    + ["한", "국", "어", "ก", "ข", "\u0e31", "ا", "ل", "ع", "д", "я"]
    + ["<s>", "</s>", "<unk>", "<pad>", "<SEP>", "<CLS>", "<br>", "<p>", "</p>", "<reserved_7>", "<0x41>"]
    + [" ", "  ", "   ", "\t", "\n", "\r\n", "\r"]
    # The normalizer's ASCII loop: letters that a combining mark composes with, user-defined
    # pieces compared as 4-byte words ("---" and "-->" in Baichuan), "<" with many pieces.
    + ["-", "--", "---", "----", "-->", ">", "\u0338", "`", "```", "e", "A", "<", "=\u0338"]
)

VOCAB_SAMPLES = {
    name: [tok.id_to_piece(i).replace("\u2581", " ") for i in range(0, tok.vocab_size, max(1, tok.vocab_size // 3000))]
    for name, (tok, _) in PAIRS.items()
}


def texts_strategy() -> st.SearchStrategy[str]:
    atom = st.one_of(
        st.sampled_from(ADVERSARIAL),
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from(sorted({p for v in VOCAB_SAMPLES.values() for p in v})),
        st.text(alphabet="abcdefghij xyz", min_size=1, max_size=8),
    )
    return st.lists(atom, min_size=0, max_size=40).map("".join)


def check(name: str, text: str | bytes) -> None:
    tok, sp = PAIRS[name]
    ids = sp.encode(text)
    assert tok.encode(text) == ids, (name, text)
    assert tok.decode(ids) == sp.decode(ids), (name, text, ids)
    if isinstance(text, str):
        assert tok.encode_as_pieces(text) == sp.encode(text, out_type=str), (name, text)
        assert tok.normalize(text) == sp.normalize(text), (name, text)


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(texts=st.lists(texts_strategy(), min_size=1, max_size=4))
def test_adversarial_unicode(texts: list[str]) -> None:
    for name in BPE_MODELS:
        for t in texts:
            check(name, t)
        tok, sp = PAIRS[name]
        assert tok.encode_batch(texts, num_threads=2) == sp.encode(texts)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    for name in BPE_MODELS:
        check(name, data)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 60))
def test_decode_random_ids(seed: int, n: int) -> None:
    rng = random.Random(seed)
    for name in BPE_MODELS:
        tok, sp = PAIRS[name]
        v = tok.vocab_size
        # Mix uniform ids with the low ids (control, unk, byte pieces live there).
        ids = [rng.randrange(v) if rng.random() < 0.5 else rng.randrange(min(v, 300)) for _ in range(n)]
        assert tok.decode(ids) == sp.decode(ids), (name, ids)
        assert tok.decode_to_bytes(ids) == sp.decode(ids, out_type=bytes), (name, ids)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_very_long_lines(seed: int) -> None:
    rng = random.Random(seed)
    for name in BPE_MODELS:
        pool = ADVERSARIAL + VOCAB_SAMPLES[name]
        line = "".join(rng.choice(pool) for _ in range(12_000))
        check(name, line)


def test_long_runs() -> None:
    # Runs that defeat chunking: one long chunk per model, including runs of spaces and ▁.
    for name in BPE_MODELS:
        for text in ("x" * 5000, " " * 3000, "\u2581" * 3000, "\n" * 2000, "ab" * 3000, "的" * 3000, "\t \n" * 1000):
            check(name, text)
