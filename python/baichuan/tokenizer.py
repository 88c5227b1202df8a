"""Python face of the Rust tokenizer (``baichuan._tokenizer``).

The native module is private: import ``Tokenizer`` from ``baichuan``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from baichuan import _tokenizer

TokenizerError = _tokenizer.TokenizerError


class Tokenizer:
    """A SentencePiece BPE model, encoding byte-identically to ``sentencepiece`` 0.2.x."""

    def __init__(self, native: _tokenizer.Tokenizer) -> None:
        self._native = native

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        return cls(_tokenizer.Tokenizer.from_file(os.fspath(path)))

    def encode(self, text: str) -> list[int]:
        return self._native.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        return self._native.encode_batch(list(texts), num_threads)

    def encode_as_pieces(self, text: str) -> list[str]:
        return self._native.encode_as_pieces(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._native.decode(list(ids))

    def id_to_piece(self, i: int) -> str:
        return self._native.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        return self._native.piece_to_id(piece)

    @property
    def vocab_size(self) -> int:
        return self._native.vocab_size

    @property
    def bos_id(self) -> int:
        return self._native.bos_id

    @property
    def eos_id(self) -> int:
        return self._native.eos_id

    @property
    def unk_id(self) -> int:
        return self._native.unk_id

    @property
    def pad_id(self) -> int:
        return self._native.pad_id
