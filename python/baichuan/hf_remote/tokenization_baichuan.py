# Baichuan-7B tokenizer for transformers (trust_remote_code), written by `baichuan export-hf`.
# It reads `tokenizer.model` (SentencePiece BPE) from this folder with one of two backends that give
# identical ids:
#   * the Rust tokenizer of the `baichuan` import package (`pip install baichuan-stack`), when it is
#     importable: several times faster, and batches are encoded on all cores;
#   * `sentencepiece` otherwise (what an environment with only transformers + sentencepiece has, as
#     when the folder is downloaded from the Hub).
# `tokenizer_backend="baichuan"` or `"sentencepiece"` (a from_pretrained keyword) forces one;
# `tokenizer.backend_name` says which one is in use.
import os
import shutil

import transformers
from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model"}
BACKENDS = ("auto", "baichuan", "sentencepiece")
# Keyword arguments the one-call batch path understands; any other sends a batch down transformers'
# generic path. _FAST_OFF: outputs only that path builds (overflow, offsets, lengths, type ids).
_FAST_KEYS = frozenset({
    "add_special_tokens", "padding_strategy", "truncation_strategy", "max_length", "stride", "is_split_into_words",
    "pad_to_multiple_of", "padding_side", "return_tensors", "return_attention_mask", "return_token_type_ids",
    "return_overflowing_tokens", "return_special_tokens_mask", "return_offsets_mapping", "return_length",
    "split_special_tokens", "verbose",
})
_FAST_OFF = ("return_token_type_ids", "return_overflowing_tokens", "return_special_tokens_mask",
             "return_offsets_mapping", "return_length", "is_split_into_words")
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


class _RustBackend:
    """The `baichuan` package's Rust tokenizer (byte-identical to sentencepiece)."""

    name = "baichuan"

    def __init__(self, tokenizer_class, vocab_file):
        self._tok = tokenizer_class.from_file(vocab_file)
        self.vocab_size = self._tok.vocab_size

    def encode(self, text):
        return self._tok.encode(text)

    def encode_batch(self, texts):
        return self._tok.encode_batch(list(texts))

    def encode_as_pieces(self, text):
        return self._tok.encode_as_pieces(text)

    def decode(self, ids):
        return self._tok.decode(ids)

    def id_to_piece(self, index):
        return self._tok.id_to_piece(index)

    def piece_to_id(self, piece):
        return self._tok.piece_to_id(piece)


class _SentencePieceBackend:
    """Google's `sentencepiece`: the reference the Rust tokenizer is tested against."""

    name = "sentencepiece"

    def __init__(self, processor_class, vocab_file):
        self._sp = processor_class(model_file=vocab_file)
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text):
        return self._sp.encode(text)

    def encode_batch(self, texts):
        return self._sp.encode(list(texts))

    def encode_as_pieces(self, text):
        return self._sp.encode(text, out_type=str)

    def decode(self, ids):
        return self._sp.decode(ids)

    def id_to_piece(self, index):
        return self._sp.id_to_piece(index)

    def piece_to_id(self, piece):
        return self._sp.piece_to_id(piece)


def _rust_backend(vocab_file):
    """The Rust backend, or None when the `baichuan` package (baichuan-stack) is not importable."""
    try:
        from baichuan import Tokenizer
    except ImportError:
        return None
    return _RustBackend(Tokenizer, vocab_file)


def _sentencepiece_backend(vocab_file):
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        return None
    return _SentencePieceBackend(SentencePieceProcessor, vocab_file)


def load_backend(vocab_file, choice="auto"):
    """The backend named by ``choice`` ("auto": Rust when importable, else sentencepiece)."""
    if choice not in BACKENDS:
        raise ValueError(f"tokenizer_backend must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice in ("auto", "baichuan"):
        backend = _rust_backend(vocab_file)
        if backend is not None:
            return backend
        if choice == "baichuan":
            raise ImportError(
                "tokenizer_backend='baichuan' needs the Rust tokenizer of the baichuan-stack package: "
                "pip install baichuan-stack"
            )
    backend = _sentencepiece_backend(vocab_file)
    if backend is None:
        raise ImportError(
            "the Baichuan tokenizer needs sentencepiece (pip install sentencepiece) or the faster Rust "
            "tokenizer of the baichuan-stack package (pip install baichuan-stack)"
        )
    return backend


class BaiChuanTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file=None,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        tokenizer_backend="auto",
        **kwargs,
    ):
        if vocab_file is None or not os.path.isfile(vocab_file):
            where = kwargs.get("name_or_path") or (os.path.dirname(vocab_file) if vocab_file else "")
            # ValueError: transformers replaces an OSError raised here by a generic message
            raise ValueError(
                f"tokenizer.model not found{' in ' + str(where) if where else ''}: the Baichuan tokenizer "
                "reads this SentencePiece model (copy it into the folder, or export again with "
                "`baichuan export-hf --tokenizer PATH`)"
            )
        self.vocab_file = vocab_file
        self._backend = load_backend(vocab_file, tokenizer_backend)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        super().__init__(
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    @property
    def backend_name(self):
        """``"baichuan"`` (the Rust tokenizer) or ``"sentencepiece"``."""
        return self._backend.name

    @property
    def vocab_size(self):
        return self._backend.vocab_size

    def get_vocab(self):
        vocab = {self._backend.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    # -- encoding: plain strings go to the backend whole (one call per batch); a string holding an
    # added token ("</s>", ...) takes transformers' generic path, which splits it out first.
    def _pre_encode(self, texts, kwargs):
        """``texts`` with every plain string replaced by its ids (batched through the backend)."""
        split_all = kwargs.get("split_special_tokens", getattr(self, "split_special_tokens", False))
        added = () if split_all else tuple(self.get_added_vocab())
        plain = [
            i for i, t in enumerate(texts)
            if isinstance(t, str) and t and not any(token in t for token in added)
        ]
        if not plain:
            return texts
        out = list(texts)
        for i, ids in zip(plain, self._backend.encode_batch([texts[i] for i in plain])):
            if ids:  # an empty result stays text (transformers refuses an empty id list)
                out[i] = ids
        return out

    def _encode_plus(self, text, text_pair=None, **kwargs):
        if not kwargs.get("is_split_into_words", False):
            batched = _TRANSFORMERS_MAJOR >= 5 and isinstance(text, (list, tuple)) and text
            if batched and text_pair is None and isinstance(text[0], (str, list, tuple)):
                fast = self._fast_batch(text, kwargs)
                if fast is not None:
                    return fast
                text = self._pre_encode(text, kwargs)
            elif isinstance(text, str):
                text = self._pre_encode([text], kwargs)[0]
                if isinstance(text_pair, str):
                    text_pair = self._pre_encode([text_pair], kwargs)[0]
        return super()._encode_plus(text, text_pair=text_pair, **kwargs)

    def _batch_encode_plus(self, batch_text_or_text_pairs, **kwargs):  # transformers 4.x only
        if not kwargs.get("is_split_into_words", False):
            fast = self._fast_batch(batch_text_or_text_pairs, kwargs)
            if fast is not None:
                return fast
            batch_text_or_text_pairs = self._pre_encode(batch_text_or_text_pairs, kwargs)
        return super()._batch_encode_plus(batch_text_or_text_pairs, **kwargs)

    def _fast_batch(self, texts, kwargs):
        """A batch of strings without truncation or extra outputs, encoded and padded the way
        transformers' generic path would (same ids, masks, padding, tensors), without its per-text
        Python work; None where the generic path is needed."""
        from transformers.tokenization_utils_base import BatchEncoding, PaddingStrategy, TruncationStrategy

        if not all(isinstance(t, str) for t in texts) or set(kwargs) - _FAST_KEYS:
            return None
        if any(kwargs.get(k) for k in _FAST_OFF):
            return None
        truncation = kwargs.get("truncation_strategy", TruncationStrategy.DO_NOT_TRUNCATE)
        if TruncationStrategy(truncation) != TruncationStrategy.DO_NOT_TRUNCATE:
            return None
        split = kwargs.get("split_special_tokens", getattr(self, "split_special_tokens", False))
        ids = [t if isinstance(t, list) else self._generic_ids(t, split) for t in self._pre_encode(texts, kwargs)]
        if kwargs.get("add_special_tokens", True) and (self.add_bos_token or self.add_eos_token):
            ids = [self.build_inputs_with_special_tokens(x) for x in ids]
        if ids:
            self._eventual_warn_about_too_long_sequence(max(ids, key=len), None, kwargs.get("verbose", True))
        padding = PaddingStrategy(kwargs.get("padding_strategy", PaddingStrategy.DO_NOT_PAD))
        mask = kwargs.get("return_attention_mask")
        if padding == PaddingStrategy.DO_NOT_PAD and not kwargs.get("pad_to_multiple_of"):
            data = {"input_ids": ids}
            if mask or (mask is None and "attention_mask" in self.model_input_names):
                data["attention_mask"] = [[1] * len(x) for x in ids]
            return BatchEncoding(data, tensor_type=kwargs.get("return_tensors"))
        encoded = self.pad(
            {"input_ids": ids},
            padding=padding.value,
            max_length=kwargs.get("max_length"),
            pad_to_multiple_of=kwargs.get("pad_to_multiple_of"),
            padding_side=kwargs.get("padding_side"),
            return_attention_mask=mask,
        )
        return BatchEncoding(dict(encoded), tensor_type=kwargs.get("return_tensors"))

    def _generic_ids(self, text, split_special_tokens):
        """Ids of a text holding added tokens (or an empty one): transformers' own splitting."""
        return self.convert_tokens_to_ids(self.tokenize(text, split_special_tokens=split_special_tokens))

    def _tokenize(self, text, **kwargs):
        return self._backend.encode_as_pieces(text)

    def _convert_token_to_id(self, token):
        return self._backend.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self._backend.id_to_piece(int(index))

    def convert_tokens_to_string(self, tokens):
        return self._backend.decode([self._backend.piece_to_id(t) for t in tokens])

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        ids = [int(i) for i in token_ids]
        if skip_special_tokens:
            special = set(self.all_special_ids)
            ids = [i for i in ids if i not in special]
        return self._backend.decode(ids)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out = out + bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        out = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            out = out + bos + [0] * len(token_ids_1) + eos
        return out

    def num_special_tokens_to_add(self, pair=False):
        n = int(self.add_bos_token) + int(self.add_eos_token)
        return n * (2 if pair else 1)

    def save_vocabulary(self, save_directory, filename_prefix=None):
        if not os.path.isdir(save_directory):
            raise ValueError(f"vocabulary path ({save_directory}) should be a directory")
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        return (out,)
