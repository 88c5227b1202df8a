# Baichuan-7B tokenizer for transformers (trust_remote_code), written by `baichuan export-hf`.
# It wraps the `baichuan` package's Rust SentencePiece tokenizer (byte-identical to sentencepiece),
# reading `tokenizer.model` from this folder: `pip install baichuan` to use it.
import os
import shutil

from transformers import PreTrainedTokenizer

try:
    from baichuan import Tokenizer as _RustTokenizer
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "this tokenizer wraps the `baichuan` package's Rust tokenizer; install it with `pip install baichuan`"
    ) from e

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model"}


class BaiChuanTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        **kwargs,
    ):
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"tokenizer model not found: {vocab_file}")
        self.vocab_file = vocab_file
        self._rust = _RustTokenizer.from_file(vocab_file)
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
    def vocab_size(self):
        return self._rust.vocab_size

    def get_vocab(self):
        vocab = {self._rust.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text, **kwargs):
        return self._rust.encode_as_pieces(text)

    def _convert_token_to_id(self, token):
        return self._rust.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self._rust.id_to_piece(int(index))

    def convert_tokens_to_string(self, tokens):
        return self._rust.decode([self._rust.piece_to_id(t) for t in tokens])

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        ids = [int(i) for i in token_ids]
        if skip_special_tokens:
            special = set(self.all_special_ids)
            ids = [i for i in ids if i not in special]
        return self._rust.decode(ids)

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
