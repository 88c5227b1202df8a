"""Hugging Face interop: export to a transformers folder and transformers' key names (the Llama map).

* ``export_hf(checkpoint, output, tokenizer=...)``: write a transformers folder: sharded
  ``model-0000K-of-0000N.safetensors`` + ``model.safetensors.index.json``, ``config.json`` with
  ``auto_map``, the remote-code files from ``baichuan/hf_remote/``, ``tokenizer.model``,
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``generation_config.json``. Then
  ``AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`` and
  ``AutoTokenizer.from_pretrained(out, trust_remote_code=True)`` load it.
* Reading checkpoints (``load_checkpoint``, ``load_pretrained``, ``find_tokenizer``, ...) lives in
  ``baichuan.checkpoint``, the one owner of every checkpoint layout (native, DeepSpeed, transformers,
  official); those names are re-exported here for existing callers.
* ``llama_config_from`` / ``to_llama_state_dict`` / ``llama_model_from``: our model as a
  transformers ``LlamaForCausalLM`` (``W_pack`` split into ``q_proj``/``k_proj``/``v_proj``),
  the reference of the fidelity tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baichuan.checkpoint import (  # noqa: F401 - the readers of checkpoint.py, re-exported for callers of hf
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    check_state_dict,
    checkpoint_config,
    checkpoint_folder,
    deepspeed_tag_dir,
    find_tokenizer,
    is_deepspeed_checkpoint,
    is_hf_folder,
    load_checkpoint,
    load_hf_state_dict,
    load_pretrained,
    load_safetensors,
    torch_load_plain,
)
from baichuan.config import ModelConfig
from baichuan.devices import canonical_dtype
from baichuan.units import SizeError, parse_size

if TYPE_CHECKING:
    import torch

    from baichuan.model import BaichuanForCausalLM

# Keys written in an exported config.json besides ModelConfig's architecture fields.
HF_ARCHITECTURE = "BaiChuanForCausalLM"
AUTO_MAP = {
    "AutoConfig": "configuration_baichuan.BaiChuanConfig",
    "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": ["tokenization_baichuan.BaiChuanTokenizer", None]}
# Runtime options of ModelConfig that are not part of an exported architecture.
_RUNTIME_KEYS = ("attn_backend", "gradient_checkpointing")


def llama_rope_parameters(config: ModelConfig) -> dict[str, Any]:
    """transformers' ``rope_parameters`` for ``config``: ``rope_theta`` plus the scaling keys as is."""
    scaling = dict(config.rope_scaling) if config.rope_scaling else {"rope_type": "default"}
    return {**scaling, "rope_theta": config.rope_theta}


def llama_config_from(config: ModelConfig) -> Any:
    """The equivalent ``transformers.LlamaConfig`` (RoPE scaling included)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        hidden_act=config.hidden_act,
        rope_parameters=llama_rope_parameters(config),
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        attention_bias=False,
        mlp_bias=False,
    )


def to_llama_state_dict(state: dict[str, torch.Tensor], hidden_size: int) -> dict[str, torch.Tensor]:
    """Our (published Baichuan) keys -> LLaMA keys: each ``W_pack`` becomes q/k/v projections."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".self_attn.W_pack.weight"):
            prefix = key[: -len("W_pack.weight")]
            q, k, v = value.split(hidden_size, dim=0)
            out[prefix + "q_proj.weight"] = q
            out[prefix + "k_proj.weight"] = k
            out[prefix + "v_proj.weight"] = v
        else:
            out[key] = value
    return out


def llama_model_from(model: BaichuanForCausalLM) -> Any:
    """A transformers ``LlamaForCausalLM`` with exactly our weights (fp32 reference for tests)."""
    import torch
    from transformers import LlamaForCausalLM

    cfg = llama_config_from(model.config)
    with torch.device("meta"):
        ref = LlamaForCausalLM(cfg)
    state = to_llama_state_dict(model.state_dict(), model.config.hidden_size)
    ref.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False, assign=True)
    if model.config.tie_word_embeddings:
        ref.tie_weights()
    # Buffers (rotary inv_freq) were created on meta; rebuild them on the CPU.
    ref.model.rotary_emb.__init__(cfg)  # type: ignore[misc,arg-type]
    return ref.to(next(model.parameters()).device)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# writing a transformers folder
# ---------------------------------------------------------------------------------------------
def _shard_size(size: str | int) -> int:
    """``--max-shard-size``: '2GB', '500MB', '10KB' or a byte count (baichuan.units.parse_size)."""
    try:
        return parse_size(size)
    except SizeError as e:
        if e.value is None:
            raise ValueError(f"--max-shard-size: cannot parse size {size!r} (e.g. 2GB, 500MB)") from None
        raise ValueError(f"--max-shard-size: must be more than 0 bytes, got {size!r}") from None


def hf_config_dict(config: ModelConfig, torch_dtype: str) -> dict[str, Any]:
    import transformers

    data = {k: v for k, v in config.to_dict().items() if k not in _RUNTIME_KEYS}
    data.update(
        architectures=[HF_ARCHITECTURE],
        auto_map=dict(AUTO_MAP),
        model_type="baichuan",
        torch_dtype=torch_dtype,
        use_cache=True,
        transformers_version=transformers.__version__,
    )
    return data


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state, key=_natural_key):
        t = state[key]
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    return shards


def _natural_key(key: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def copy_remote_code(output: Path) -> list[str]:
    from baichuan.hf_remote import REMOTE_FILES

    pkg = resources.files("baichuan.hf_remote")
    for name in REMOTE_FILES:
        (output / name).write_bytes(pkg.joinpath(name).read_bytes())
    return list(REMOTE_FILES)


def export_hf(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | ModelConfig | None = None,
    dtype: str = "auto",
    max_shard_size: str | int = "2GB",
    overwrite: bool = False,
) -> Path:
    """Convert ``checkpoint`` (native, DeepSpeed or transformers folder) to a transformers folder.

    ``tokenizer`` defaults to ``checkpoint/tokenizer.model``; its vocabulary must equal the model's.
    ``dtype`` "auto" keeps the checkpoint's dtype (a DeepSpeed checkpoint's: its ``model/`` folder's)."""
    import torch
    from safetensors.torch import save_file

    from baichuan import Tokenizer

    out = Path(output)
    ckpt = checkpoint_folder(checkpoint)
    tok_path = Path(tokenizer) if tokenizer is not None else find_tokenizer(ckpt)
    if tok_path is None or not tok_path.is_file():
        raise FileNotFoundError(
            f"tokenizer model not found: {tok_path or ckpt / 'tokenizer.model'} "
            "(pass --tokenizer PATH to the SentencePiece .model)"
        )
    dtype = canonical_dtype(dtype)  # an unknown name is refused before any work
    shard_bytes = _shard_size(max_shard_size)  # a bad size is refused before any work
    if out.resolve() == ckpt.resolve():
        raise ValueError("the output folder must differ from the checkpoint folder")
    from baichuan.safety import plan_output

    # Checked before any work; --overwrite deletes only a previous export there (baichuan.safety).
    config_input = config if isinstance(config, (str, os.PathLike)) else None
    plan = plan_output(out, "export-hf", overwrite=overwrite, inputs=[checkpoint, ckpt, tok_path, config_input])

    cfg, state = load_checkpoint(ckpt, config)
    tok = Tokenizer.from_file(tok_path)
    if tok.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"vocabulary mismatch: tokenizer {tok_path} has {tok.vocab_size} pieces but the model's "
            f"vocab_size is {cfg.vocab_size}"
        )
    if dtype != "auto":
        target = getattr(torch, dtype)
        state = {k: v.to(target) for k, v in state.items()}
    dtypes = {v.dtype for v in state.values()}
    torch_dtype = str(next(iter(dtypes))).removeprefix("torch.") if len(dtypes) == 1 else "float32"

    shards = _shard({k: v.contiguous() for k, v in state.items()}, shard_bytes)
    n = len(shards)
    plan.apply([f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)])
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        for key, t in shard.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
    ordered = dict(sorted(weight_map.items(), key=lambda kv: _natural_key(kv[0])))
    index = {"metadata": {"total_size": total}, "weight_map": ordered}
    _write_json(out / "model.safetensors.index.json", index)
    _write_json(out / CONFIG_NAME, hf_config_dict(cfg, torch_dtype))
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
            "max_new_tokens": 64,
            "repetition_penalty": 1.1,
        },
    )
    shutil.copyfile(tok_path, out / "tokenizer.model")
    _write_json(
        out / "tokenizer_config.json",
        {
            "auto_map": TOKENIZER_AUTO_MAP,
            "tokenizer_class": "BaiChuanTokenizer",
            "add_bos_token": False,
            "add_eos_token": False,
            "bos_token": tok.id_to_piece(cfg.bos_token_id),
            "eos_token": tok.id_to_piece(cfg.eos_token_id),
            "unk_token": tok.id_to_piece(tok.unk_id),
            "pad_token": tok.id_to_piece(cfg.pad_token_id),
            "clean_up_tokenization_spaces": False,
            "model_max_length": cfg.context_window,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": tok.id_to_piece(cfg.bos_token_id),
            "eos_token": tok.id_to_piece(cfg.eos_token_id),
            "unk_token": tok.id_to_piece(tok.unk_id),
            "pad_token": tok.id_to_piece(cfg.pad_token_id),
        },
    )
    copy_remote_code(out)
    return out


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
