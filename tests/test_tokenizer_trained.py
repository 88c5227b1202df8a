"""Models trained at test time with sentencepiece's own trainer under other options (identity
normalizer, no dummy prefix, remove_extra_whitespaces on/off, user-defined and control symbols,
treat_whitespace_as_suffix, with and without byte fallback, nfkc_cf), plus trained models edited
in the proto (escape_whitespaces off, UNUSED and CONTROL pieces). Ours must match sentencepiece
on held-out real text, edge cases and hypothesis-generated text."""

from __future__ import annotations

import io
import random

import pytest

from baichuan import Tokenizer
from tokenizer_corpus import EVAL_DIR, eval_texts

spm = pytest.importorskip("sentencepiece")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sentencepiece import sentencepiece_model_pb2 as pb  # noqa: E402

from test_tokenizer import EDGE_CASES  # noqa: E402

UD = ["<ud>", "ab", "qu", "的", "。", "<br>", "\n", "12"]

VARIANTS: dict[str, dict[str, object]] = {
    "default_bf": dict(byte_fallback=True),
    "identity_nodummy": dict(normalization_rule_name="identity", add_dummy_prefix=False),
    "identity_rew": dict(normalization_rule_name="identity", remove_extra_whitespaces=True, byte_fallback=True),
    "rew_off": dict(remove_extra_whitespaces=False, user_defined_symbols=UD),
    "ud_ctl_nobf_small": dict(
        user_defined_symbols=UD, control_symbols=["<ctl>", "</ctl>"], vocab_size=1200, character_coverage=0.98
    ),
    "wsfx_bf": dict(treat_whitespace_as_suffix=True, byte_fallback=True, user_defined_symbols=UD),
    "wsfx_rew_off_nodummy": dict(treat_whitespace_as_suffix=True, remove_extra_whitespaces=False, add_dummy_prefix=False),
    "nfkc_cf": dict(normalization_rule_name="nfkc_cf", byte_fallback=True),
    "nodummy_rew_off": dict(add_dummy_prefix=False, remove_extra_whitespaces=False, byte_fallback=True),
    "split_digits_ws": dict(split_digits=True, split_by_whitespace=False, byte_fallback=True),
}

if not EVAL_DIR.is_dir():
    pytest.skip(f"{EVAL_DIR} is absent", allow_module_level=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    texts = eval_texts()
    rng = random.Random(7)
    picked = rng.sample(texts, 6000)
    train, held = picked[:3000], picked[3000:]
    path = tmp_path_factory.mktemp("spm") / "train.txt"
    path.write_text("\n".join(t.replace("\n", " ").replace("\r", " ") for t in train), encoding="utf-8")
    return str(path), held


def train(corpus_file: str, **opts: object) -> bytes:
    out = io.BytesIO()
    args: dict[str, object] = dict(
        input=corpus_file, model_writer=out, model_type="bpe", vocab_size=2000, character_coverage=0.995,
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    args.update(opts)
    spm.SentencePieceTrainer.train(**args)
    return out.getvalue()


def compare(proto: bytes, texts: list[str | bytes], label: str) -> None:
    sp = spm.SentencePieceProcessor(model_proto=proto)
    tok = Tokenizer.from_bytes(proto, origin=label)
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (
        sp.vocab_size(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id(),
    )
    ref = sp.encode(texts)
    ours = tok.encode_batch(texts)
    for t, a, b in zip(texts, ref, ours):
        assert a == b, (label, t)
    for t in texts[:300]:
        if isinstance(t, str):
            assert tok.encode_as_pieces(t) == sp.encode(t, out_type=str), (label, t)
    assert tok.decode_batch(ref) == sp.decode(ref), label
    rng = random.Random(label)
    for _ in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(12))]
        assert tok.decode(ids) == sp.decode(ids), (label, ids)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_trained_variant(variant: str, corpus: tuple[str, list[str]]) -> None:
    path, held = corpus
    proto = train(path, **VARIANTS[variant])
    m = pb.ModelProto()
    m.ParseFromString(proto)
    assert m.trainer_spec.model_type == m.trainer_spec.BPE
    compare(proto, list(EDGE_CASES) + held + ["<ctl>x</ctl> <ud>ab qu的。"], variant)


def edited(proto: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    m = pb.ModelProto()
    m.ParseFromString(proto)
    edit(m)
    return m.SerializeToString()


def test_edited_protos(corpus: tuple[str, list[str]]) -> None:
    path, held = corpus
    base = train(path, byte_fallback=True, user_defined_symbols=UD)
    texts = list(EDGE_CASES) + held[:1500]

    def no_escape(m: pb.ModelProto) -> None:
        m.normalizer_spec.escape_whitespaces = False

    def some_unused(m: pb.ModelProto) -> None:
        # Every 7th multi-character NORMAL piece becomes UNUSED: whole-string BPE with
        # resegmentation (these pieces are still merge steps but are never emitted).
        for i, p in enumerate(m.pieces):
            if p.type == p.NORMAL and len(p.piece) > 1 and i % 7 == 0:
                p.type = p.UNUSED

    def some_control(m: pb.ModelProto) -> None:
        for i, p in enumerate(m.pieces):
            if p.type == p.NORMAL and i % 11 == 0:
                p.type = p.CONTROL

    def flags_off(m: pb.ModelProto) -> None:
        m.normalizer_spec.add_dummy_prefix = False
        m.normalizer_spec.remove_extra_whitespaces = False

    for name, fn in [("no_escape", no_escape), ("some_unused", some_unused), ("some_control", some_control),
                     ("flags_off", flags_off)]:
        compare(edited(base, fn), texts, name)


_ALPHABET = list("abqu 的。\n\t<ud>ctl/12　\u00a0\u2581xyz") + ["<ud>", "<ctl>", "  ", "的。"]


@settings(max_examples=40, deadline=None)
@given(text=st.lists(st.sampled_from(_ALPHABET), max_size=40).map("".join))
def test_trained_models_hypothesis(text: str, corpus: tuple[str, list[str]]) -> None:
    path, _ = corpus
    for variant in ("ud_ctl_nobf_small", "wsfx_bf", "wsfx_rew_off_nodummy", "rew_off"):
        proto = _trained_cache(path, variant)
        sp = spm.SentencePieceProcessor(model_proto=proto)
        tok = Tokenizer.from_bytes(proto)
        assert tok.encode(text) == sp.encode(text), (variant, text)
        assert tok.encode_as_pieces(text) == sp.encode(text, out_type=str), (variant, text)
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text)), (variant, text)


_PROTOS: dict[tuple[str, str], bytes] = {}


def _trained_cache(path: str, variant: str) -> bytes:
    key = (path, variant)
    if key not in _PROTOS:
        _PROTOS[key] = train(path, **VARIANTS[variant])
    return _PROTOS[key]
