"""Hand-built ModelProtos (docs/sentencepiece-behaviour.md §10): merge priority corner cases (ties, ±0.0, NaN, ±inf),
UNUSED resegmentation, CONTROL pieces, byte fallback at odd ids, missing unk, NUL pieces, and
load-time errors. Every expectation is checked against sentencepiece itself."""

from __future__ import annotations

import math
import struct

import pytest

from baichuan import Tokenizer, TokenizerError

spm = pytest.importorskip("sentencepiece")
from sentencepiece import sentencepiece_model_pb2 as pb  # noqa: E402

N, U, C, UD, UNUSED, B = 1, 2, 3, 4, 5, 6


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def build(extra: list[tuple[str, float, int]], byte_fallback: bool = False, unk: bool = True,
          base: tuple[str, ...] = ("a", "b", "c"), **norm: bool) -> bytes:
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = byte_fallback
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = norm.get("add_dummy_prefix", False)
    m.normalizer_spec.remove_extra_whitespaces = norm.get("remove_extra_whitespaces", False)
    m.normalizer_spec.escape_whitespaces = True

    def add(piece: str, score: float, typ: int) -> None:
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, score, typ

    if unk:
        add("<unk>", 0.0, U)
    add("<s>", 0.0, C)
    add("</s>", 0.0, C)
    if byte_fallback:
        for i in range(256):
            add(f"<0x{i:02X}>", 0.0, B)
    for ch in base:
        add(ch, -1.0, N)
    for piece, score, typ in extra:
        add(piece, score, typ)
    return m.SerializeToString()


TEXTS = ["abc", "abcbc", "ab", "abab", "xab", "abca", "abcab", "d", "dd", "ad", "a", "b", "c", "cab", "bcbcbc",
         "a b c", " abc", "abc ", "zzabczz", "\x00", "a\x00b", "", "aaaa", "abcabcabc" * 20]

NAN = float("nan")
NEG_NAN = struct.unpack("<f", struct.pack("<I", 0xFFC00000))[0]

CASES: dict[str, bytes] = {
    "tie_leftmost": build([("ab", -0.5, N), ("bc", -0.5, N)]),
    "tie_id_order": build([("bc", -0.5, N), ("ab", -0.5, N)]),
    "higher_wins": build([("ab", -0.6, N), ("bc", -0.5, N)]),
    "neg_zero_vs_pos_zero": build([("ab", -0.0, N), ("bc", 0.0, N)]),
    "pos_zero_vs_neg_zero": build([("ab", 0.0, N), ("bc", -0.0, N)]),
    "pos_nan": build([("ab", NAN, N), ("bc", 5.0, N)]),
    "neg_nan": build([("ab", NEG_NAN, N), ("bc", -1e30, N)]),
    "inf": build([("ab", math.inf, N), ("bc", 5.0, N)]),
    "unused_step": build([("ab", -0.1, UNUSED), ("abc", -0.2, N)]),
    "unused_nested": build([("ab", -0.1, UNUSED), ("abc", -0.2, UNUSED), ("abca", -0.3, N)]),
    "unused_char": build([("d", -1.0, UNUSED), ("ad", -0.5, N)]),
    "unused_char_bf": build([("d", -1.0, UNUSED), ("ad", -0.5, N)], byte_fallback=True),
    "control_blocks_merge": build([("ab", -0.1, C), ("abc", -0.2, N)]),
    "control_char": build([("b", -1.0, C)], base=("a",)),
    "bf_no_unk": build([("ab", -0.1, N)], byte_fallback=True, unk=False),
    "nul_unused": build([("\x00", 0.0, UNUSED)]),
    "nul_normal_bf": build([("\x00", 0.0, N)], byte_fallback=True),
    "nul_control_bf": build([("\x00", 0.0, C)], byte_fallback=True),
    "ud_frozen": build([("ab", -0.1, N), ("bc", -0.1, UD), ("abc", 0.5, N)]),
    "dummy_rew": build([("▁a", -0.1, N), ("▁▁", -0.2, N), ("b▁", -0.3, N)], add_dummy_prefix=True,
                       remove_extra_whitespaces=True),
    "spaces_inside": build([("▁a", -0.1, N), ("a▁b", -0.05, N), ("▁▁", -0.2, N), ("c▁", -0.3, N)],
                           add_dummy_prefix=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_synthetic_models_match_sentencepiece(case: str) -> None:
    proto = CASES[case]
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    tok = Tokenizer.from_bytes(proto, origin=case)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
    for t in TEXTS:
        ids = sp.encode(t)
        assert tok.encode(t) == ids, (case, t)
        assert tok.encode_as_pieces(t) == sp.encode(t, out_type=str), (case, t)
        assert tok.decode(ids) == sp.decode(ids), (case, t)
    for i in range(tok.vocab_size):
        assert tok.decode([i, i]) == sp.decode([i, i]), (case, i)


def test_spec_vectors_on_synthetic_models() -> None:
    enc = lambda case, t: Tokenizer.from_bytes(CASES[case]).encode_as_pieces(t)  # noqa: E731
    assert enc("tie_leftmost", "abc") == ["ab", "c"]
    assert enc("neg_zero_vs_pos_zero", "abc") == ["a", "bc"]
    assert enc("pos_nan", "abc") == ["ab", "c"]
    assert enc("neg_nan", "abc") == ["a", "bc"]
    assert enc("unused_step", "abc") == ["abc"]
    assert enc("unused_step", "ab") == ["a", "b"]
    assert Tokenizer.from_bytes(CASES["unused_char"]).encode("dd") == [0]
    assert Tokenizer.from_bytes(CASES["control_char"]).encode("ab") == [3, 0]
    assert Tokenizer.from_bytes(CASES["bf_no_unk"]).unk_id == -1
    assert f32(-0.0) == 0.0


BAD: dict[str, bytes] = {
    "duplicate": build([("a", -1.0, N)]),
    "duplicate_control": build([("<s>", -1.0, N)]),
    "empty_piece": build([("", -1.0, N)]),
    "nul_normal": build([("\x00", 0.0, N)]),
    "nul_inside": build([("x\x00y", 0.0, N)]),
    "byte_without_bf": build([("<0x41>", 0.0, B)]),
    "no_unk": build([], unk=False),
    "two_unk": build([("<unk2>", 0.0, U)]),
    "long_piece": build([("x" * 8000, 0.0, N)]),
    "bad_byte_piece": build([("<0x4g>", 0.0, B)], byte_fallback=True),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_models_fail_in_both(case: str) -> None:
    proto = BAD[case]
    with pytest.raises(Exception):  # noqa: B017 (sentencepiece's exception type is not ours to pin)
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(proto)
    with pytest.raises(TokenizerError, match=case):
        Tokenizer.from_bytes(proto, origin=case)


def test_piece_of_7999_bytes_loads() -> None:
    proto = build([("x" * 7999, 0.0, N)])
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    assert Tokenizer.from_bytes(proto).vocab_size == sp.vocab_size()


def test_missing_byte_piece_fails() -> None:
    m = pb.ModelProto()
    m.ParseFromString(build([], byte_fallback=True))
    del m.pieces[3 + 0x41]
    with pytest.raises(TokenizerError, match="256 byte pieces"):
        Tokenizer.from_bytes(m.SerializeToString(), origin="x")
