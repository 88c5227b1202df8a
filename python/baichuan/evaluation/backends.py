"""Loading the model and tokenizer to evaluate: our checkpoints or any transformers causal LM folder.

- Baichuan folders (ours, ``export-hf``'s, the official release) load through ``baichuan.checkpoint.load``.
- A transformers folder (``config.json`` with ``model_type`` plus weights) loads through
  ``AutoModelForCausalLM``; remote code only with ``trust_remote_code=True`` (the folders
  ``baichuan export-hf`` writes, or ones the user vouches for).
- Tokenizer: an explicit ``tokenizer`` path, else ``tokenizer.model`` in the model folder, read by
  our Rust ``Tokenizer`` (byte-identical to SentencePiece). Folders without a SentencePiece model
  fall back to the folder's transformers tokenizer (no special tokens added).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baichuan.checkpoint import is_hf_folder
from baichuan.evaluation.data import EvalDataError


class HFTokenizerAdapter:
    """A transformers tokenizer seen through our ``encode``/``encode_batch`` interface."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.bos_id = tok.bos_token_id
        self.size = len(tok)  # ids in use (added tokens included); not `vocab_size`, see check_tokenizer_fits

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def load_tokenizer(model_dir: str | os.PathLike[str] | None, tokenizer: str | os.PathLike[str] | None = None) -> Any:
    from baichuan import Tokenizer

    if tokenizer is not None:
        path = Path(tokenizer)
        if path.is_dir():
            path = path / "tokenizer.model"
        if not path.is_file():
            raise EvalDataError(f"{path}: tokenizer model not found")
        return Tokenizer.from_file(path)
    if model_dir is None:
        raise EvalDataError("no tokenizer given")
    if not Path(model_dir).is_dir():
        raise EvalDataError(f"{model_dir}: model directory not found")
    from baichuan.checkpoint import find_tokenizer

    spm = find_tokenizer(model_dir)  # as `baichuan generate`: also inside a DeepSpeed checkpoint's model/
    if spm is not None:
        return Tokenizer.from_file(spm)
    if is_hf_folder(Path(model_dir)):
        from transformers import AutoTokenizer

        return HFTokenizerAdapter(AutoTokenizer.from_pretrained(str(model_dir)))
    raise EvalDataError(f"{model_dir}: no tokenizer.model; pass --tokenizer")


def _config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_baichuan(path: Path) -> bool:
    """Our native folder, a folder ``baichuan export-hf`` wrote, or the official Baichuan-7B
    release: all load into our ``BaichuanForCausalLM`` without remote code."""
    data = _config(path)
    archs = [a.lower() for a in data.get("architectures") or []]
    return data.get("model_type") == "baichuan" or any("baichuan" in a for a in archs)


BACKENDS = ("auto", "baichuan", "transformers")


def load_model(
    model_dir: str | os.PathLike[str], *, device: str, dtype: Any, trust_remote_code: bool = False,
    backend: str = "auto",
) -> Any:
    """The model in eval mode on ``device``.

    ``auto``: Baichuan folders (ours, exported, official) -> ``BaichuanForCausalLM``; any other
    transformers folder -> ``AutoModelForCausalLM``. ``transformers`` forces the latter (remote
    code only with ``trust_remote_code``)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise EvalDataError(f"{path}: model directory not found")
    if backend not in BACKENDS:
        raise EvalDataError(f"unknown backend {backend!r} (have {', '.join(BACKENDS)})")
    if backend == "transformers" or (backend == "auto" and is_hf_folder(path) and not _is_baichuan(path)):
        from baichuan.checkpoint import is_deepspeed_checkpoint

        if is_deepspeed_checkpoint(path):
            raise EvalDataError(
                f"{path}: a DeepSpeed checkpoint, not a transformers folder; use --backend baichuan (or auto)"
            )
        model = _load_transformers(path, dtype, trust_remote_code)
    else:
        from baichuan.checkpoint import load_pretrained

        model = load_pretrained(path, device="cpu", dtype=dtype)
    model = model.to(device)
    model.eval()
    return model


def _load_transformers(path: Path, dtype: Any, trust_remote_code: bool) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` (which reads ``.bin`` files with weights_only=True);
    a refused or unreadable weights file is one line naming the folder, not a traceback."""
    import pickle

    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    except pickle.UnpicklingError as e:
        from baichuan.checkpoint import _unpickler_detail

        raise EvalDataError(
            f"{path}: refused: a weights file holds more than plain tensors and was not unpickled "
            f"(torch.load weights_only=True: {_unpickler_detail(e)})"
        ) from None
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise EvalDataError(f"{path}: transformers could not load the model ({first})") from None
