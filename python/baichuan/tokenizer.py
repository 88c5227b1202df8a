"""Python face of the Rust tokenizer (``baichuan._tokenizer``).

The native module is private: import ``Tokenizer`` from ``baichuan``. Every method mirrors the
``sentencepiece.SentencePieceProcessor`` method of the same name (0.2.x, BPE models) and returns
the same values; special ids are ``-1`` when the model has no such piece, as in sentencepiece.
Encoding releases the GIL, so Python threads can encode concurrently as well.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from baichuan import _tokenizer

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

TokenizerError = _tokenizer.TokenizerError

Text = str | bytes


def _ids(ids: Iterable[int]) -> list[int]:
    """Accepts a list/tuple of ints or a 1-D numpy integer array."""
    tolist = getattr(ids, "tolist", None)
    if tolist is not None:
        out = tolist()
        return out if isinstance(out, list) else [out]
    return list(ids)


class Tokenizer:
    """A SentencePiece BPE model, encoding byte-identically to ``sentencepiece`` 0.2.x.

    >>> tok = Tokenizer.from_file("tokenizer.model")   # doctest: +SKIP
    >>> tok.encode("你好，世界")                         # doctest: +SKIP
    """

    def __init__(self, native: _tokenizer.Tokenizer) -> None:
        self._native = native

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Loads a ``.model`` file. Raises ``FileNotFoundError``/``OSError`` for unreadable files
        and ``TokenizerError`` (a ``ValueError``) naming the file and the reason for bad ones."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be str or os.PathLike, not {type(path).__name__}")
        return cls(_tokenizer.Tokenizer.from_file(os.fspath(path)))

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<bytes>") -> Tokenizer:
        """Parses a serialized ``ModelProto``; ``origin`` names it in error messages."""
        return cls(_tokenizer.Tokenizer.from_bytes(bytes(data), origin))

    def encode(self, text: Text) -> list[int]:
        """Ids of ``text`` (``str`` or raw ``bytes``), no BOS/EOS."""
        return self._native.encode(text)

    def encode_batch(self, texts: Sequence[Text], num_threads: int | None = None) -> list[list[int]]:
        """``[encode(t) for t in texts]`` computed in parallel with the GIL released.
        ``num_threads``: ``None`` or negative = all cores, ``0`` = 1."""
        batch = texts if isinstance(texts, list) else list(texts)
        # Building hundreds of thousands of result lists would trigger the cyclic GC over and
        # over (about a quarter of the time on the eval corpus); the lists cannot form cycles,
        # so pause it for the call. See docs/performance.md.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._native.encode_batch(batch, num_threads)
        finally:
            if paused:
                gc.enable()

    def encode_batch_numpy(
        self, texts: Sequence[Text], num_threads: int | None = None
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
        """Flat ids (``uint32``) and ``len(texts) + 1`` offsets (``int64``): the ids of text ``i``
        are ``ids[offsets[i]:offsets[i + 1]]``."""
        import numpy as np

        ids, offsets = self._native.encode_batch_flat(list(texts), num_threads)
        return np.frombuffer(ids, dtype="<u4"), np.frombuffer(offsets, dtype="<i8")

    def encode_as_pieces(self, text: Text) -> list[str]:
        return self._native.encode_as_pieces(text)

    def encode_as_ids(self, text: Text) -> list[int]:
        return self._native.encode(text)

    def normalize(self, text: Text) -> str:
        """The normalized text SentencePiece encodes (``▁`` for spaces)."""
        return self._native.normalize(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``. An id outside ``[0, vocab_size)`` raises ``IndexError``."""
        return self._native.decode(_ids(ids))

    def decode_batch(self, seqs: Sequence[Iterable[int]], num_threads: int | None = None) -> list[str]:
        """``[decode(s) for s in seqs]`` in parallel."""
        return self._native.decode_batch([_ids(s) for s in seqs], num_threads)

    def decode_to_bytes(self, ids: Iterable[int]) -> bytes:
        return self._native.decode_to_bytes(_ids(ids))

    def id_to_piece(self, i: int) -> str:
        return self._native.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        """Id of ``piece`` (any type); the unknown id for strings not in the vocabulary."""
        return self._native.piece_to_id(piece)

    def get_score(self, i: int) -> float:
        return self._native.score(i)

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

    @property
    def origin(self) -> str:
        """The file (or ``from_bytes`` origin) this model came from."""
        return self._native.origin

    def __len__(self) -> int:
        return self._native.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(origin={self.origin!r}, vocab_size={self.vocab_size})"
