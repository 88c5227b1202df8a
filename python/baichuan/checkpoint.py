"""Our native model folder: ``config.json`` (``ModelConfig.to_dict()``) + ``model.safetensors``.

    save_model(model, "out/model")                 # writes both files atomically (tmp + rename)
    model = load_model("out/model", device="cpu", dtype=torch.bfloat16)

The state dict uses the published parameter names (see ``baichuan.model``). Loading checks every
key and shape and names what differs. Weights are never unpickled: safetensors only here; the
official ``.bin`` layout is read by ``baichuan.hf`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from baichuan.errors import BaichuanError

import os
from pathlib import Path
from typing import TYPE_CHECKING

from baichuan.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from baichuan.model import BaichuanForCausalLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(BaichuanError, ValueError):
    """A model folder or state dict that does not fit the model."""


def is_native_folder(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def save_model(model: BaichuanForCausalLM, directory: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # shared with model.embed_tokens.weight
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "producer": "baichuan"})
    os.replace(tmp, out / WEIGHTS_NAME)
    tmp_cfg = out / (CONFIG_NAME + ".tmp")
    model.config.to_json_file(tmp_cfg)
    os.replace(tmp_cfg, out / CONFIG_NAME)
    return out


def check_state_dict(
    model: BaichuanForCausalLM, state: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Verify keys and shapes against ``model``; returns the dict with tied weights filled in."""
    expected = model.state_dict()
    state = dict(state)
    if model.config.tie_word_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"{source}: " + "; ".join(parts))
    for key, ref in expected.items():
        got = tuple(state[key].shape)
        if got != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint has {got}, "
                f"the model (config) expects {tuple(ref.shape)}"
            )
    return state


def load_state_dict_into(model: BaichuanForCausalLM, state: dict[str, torch.Tensor], source: str) -> None:
    state = check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)


def load_model(
    directory: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_backend: str | None = None,
) -> BaichuanForCausalLM:
    """Load a native folder. ``dtype`` None keeps the stored dtype of the weights (per tensor)."""
    import torch
    from safetensors.torch import load_file

    from baichuan.model import BaichuanForCausalLM

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"model folder not found: {d}")
    cfg_path, weights_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{d} is not a baichuan model folder: {p.name} is missing "
                f"(expected {CONFIG_NAME} + {WEIGHTS_NAME}; use `baichuan export-hf` or "
                "baichuan.hf.load_hf_folder for other layouts)"
            )
    config = ModelConfig.from_json_file(cfg_path)
    if attn_backend is not None:
        config.attn_backend = attn_backend
    state = load_file(str(weights_path), device="cpu")
    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
    state = check_state_dict(model, state, str(weights_path))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device)
