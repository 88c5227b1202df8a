"""Hugging Face interop: the only module that knows transformers' key names and folder layouts.

* ``export_hf(checkpoint, output, tokenizer=...)``: write a transformers folder: sharded
  ``model-0000K-of-0000N.safetensors`` + ``model.safetensors.index.json``, ``config.json`` with
  ``auto_map``, the remote-code files from ``baichuan/hf_remote/``, ``tokenizer.model``,
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``generation_config.json``. Then
  ``AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`` and
  ``AutoTokenizer.from_pretrained(out, trust_remote_code=True)`` load it.
* ``load_checkpoint(path)``: (config, state dict) from any of: our native folder (config.json +
  model.safetensors), a transformers folder (the official baichuan-7B layout with sharded
  ``pytorch_model-*.bin`` + ``pytorch_model.bin.index.json``, a single ``pytorch_model.bin``, or
  safetensors with or without an index; what ``export_hf`` writes), or a DeepSpeed checkpoint
  directory (ZeRO stage 1-3; the one with ``latest``, or one ``global_stepN`` tag folder), which
  ``deepspeed.utils.zero_to_fp32`` consolidates. DeepSpeed stores pickles: only convert
  checkpoints you wrote yourself. ``.bin`` weights are read with ``torch.load(weights_only=True)``.
* ``load_pretrained(path, device, dtype)``: a ``BaichuanForCausalLM`` from any of those.
* ``llama_config_from`` / ``to_llama_state_dict`` / ``llama_model_from``: our model as a
  transformers ``LlamaForCausalLM`` (``W_pack`` split into ``q_proj``/``k_proj``/``v_proj``),
  the reference of the fidelity tests.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baichuan.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, check_state_dict
from baichuan.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from baichuan.model import BaichuanForCausalLM

logger = logging.getLogger(__name__)

# Keys written in an exported config.json besides ModelConfig's architecture fields.
HF_ARCHITECTURE = "BaiChuanForCausalLM"
AUTO_MAP = {
    "AutoConfig": "configuration_baichuan.BaiChuanConfig",
    "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": ["tokenization_baichuan.BaiChuanTokenizer", None]}
# Runtime options of ModelConfig that are not part of an exported architecture.
_RUNTIME_KEYS = ("attn_backend", "gradient_checkpointing")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}
# Upstream buffers that are not parameters of our model.
_IGNORED_KEY = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
# Wrappers that prefix state-dict keys (DeepSpeed/DDP "module.", torch.compile "_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def llama_config_from(config: ModelConfig) -> Any:
    """The equivalent ``transformers.LlamaConfig``."""
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
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
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
    ref.model.rotary_emb.__init__(cfg)
    return ref.to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------------------
# reading checkpoints
# ---------------------------------------------------------------------------------------------
def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        if _IGNORED_KEY.search(key):
            continue
        out[key] = value
    return out


def _safe_child(folder: Path, name: str, what: str) -> Path:
    """A file named in an index must be a plain file name inside ``folder``."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or os.path.isabs(name):
        raise CheckpointError(f"{what}: refusing shard name {name!r} (must be a file name inside {folder})")
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{what} names {name}, which is missing in {folder}")
    return path


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # mmap needs the zip format; old-format files load without it (still weights_only).
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for anything but plain tensors
        raise CheckpointError(f"{path}: cannot read it as plain tensors with weights_only=True ({e})") from None


def is_deepspeed_checkpoint(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    if (p / "latest").is_file():
        return True
    return any(p.glob("*mp_rank_*_model_states.pt")) or any(p.glob("*/*mp_rank_*_model_states.pt"))


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return any(
        (p / n).is_file()
        for n in ("pytorch_model.bin.index.json", "pytorch_model.bin", "model.safetensors.index.json")
    ) or ((p / "model.safetensors").is_file() and _config_is_hf(p / CONFIG_NAME))


def _config_is_hf(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "architectures" in data or "auto_map" in data


def load_hf_state_dict(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Weights of a transformers folder (official baichuan-7B layout or our export)."""
    from safetensors.torch import load_file

    d = Path(folder)
    for index_name, loader in (
        ("model.safetensors.index.json", lambda p: load_file(str(p), device="cpu")),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        index_path = d / index_name
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text(encoding="utf-8"))
                weight_map = index["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index_path}: not a weight index ({e})") from None
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                part = loader(_safe_child(d, shard, str(index_path)))
                state.update(part)
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise CheckpointError(f"{index_path}: keys listed but absent from their shards: {missing[:5]}")
            return _normalise_keys(state)
    if (d / "model.safetensors").is_file():
        return _normalise_keys(load_file(str(d / "model.safetensors"), device="cpu"))
    if (d / "pytorch_model.bin").is_file():
        return _normalise_keys(_load_bin(d / "pytorch_model.bin"))
    raise FileNotFoundError(
        f"{d}: no weights found (looked for model.safetensors[.index.json], pytorch_model.bin[.index.json])"
    )


def _deepspeed_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if (path / "latest").is_file():
        root, tag = path, None
    else:  # a tag folder (global_stepN) was given
        root, tag = path.parent, path.name
    logger.info("consolidating DeepSpeed checkpoint %s (tag %s)", root, tag or "latest")
    state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    return _normalise_keys(dict(state))


def _side_folders(path: Path) -> list[Path]:
    """Where a checkpoint's config.json / tokenizer.model may sit: the folder itself and, for a
    DeepSpeed checkpoint, the tag folder and its ``model/`` native folder (what ``baichuan train``
    writes: CKPT/latest, CKPT/step-N/{mp_rank_*, model/config.json, model/tokenizer.model})."""
    folders = [path]
    if (path / "latest").is_file():
        tag = (path / "latest").read_text(encoding="utf-8").strip()
        if tag and "/" not in tag and "\\" not in tag and tag not in (".", ".."):
            folders += [path / tag, path / tag / "model"]
    elif is_deepspeed_checkpoint(path):
        folders += [path / "model", path.parent]
    return folders


def find_tokenizer(checkpoint: str | os.PathLike[str]) -> Path | None:
    """``tokenizer.model`` stored with a checkpoint (see ``_side_folders``), or None."""
    for d in _side_folders(Path(checkpoint)):
        if (d / "tokenizer.model").is_file():
            return d / "tokenizer.model"
    return None


def _find_config(path: Path, config: str | os.PathLike[str] | ModelConfig | None) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if config is not None:
        c = Path(config)
        if c.is_dir():
            c = c / CONFIG_NAME
        if c.is_file():
            return ModelConfig.from_json_file(c)
        try:
            return ModelConfig.preset(str(config))
        except ValueError:
            raise FileNotFoundError(
                f"model config {config}: neither a config.json, a folder with one, nor a preset"
            ) from None
    candidates = [d / CONFIG_NAME for d in _side_folders(path)]
    for c in candidates:
        if c.is_file():
            return ModelConfig.from_json_file(c)
    raise FileNotFoundError(
        f"{path}: no model config found (looked for {', '.join(str(c) for c in candidates)}); "
        "pass --config CONFIG.json (or a preset name such as 7b)"
    )


def load_checkpoint(
    path: str | os.PathLike[str], config: str | os.PathLike[str] | ModelConfig | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict with our key names) of a native, transformers or DeepSpeed checkpoint.

    The state dict is checked against the config (keys and shapes, naming what differs)."""
    import torch

    from baichuan.model import BaichuanForCausalLM

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_file():
        raise CheckpointError(f"{p}: expected a checkpoint folder, got a file")
    if is_deepspeed_checkpoint(p):
        cfg = _find_config(p, config)
        state = _deepspeed_state_dict(p)
        source = f"DeepSpeed checkpoint {p}"
    elif is_hf_folder(p):
        cfg = _find_config(p, config)
        state = load_hf_state_dict(p)
        source = f"transformers folder {p}"
    elif (p / WEIGHTS_NAME).is_file():
        cfg = _find_config(p, config)
        from safetensors.torch import load_file

        state = load_file(str(p / WEIGHTS_NAME), device="cpu")
        source = str(p / WEIGHTS_NAME)
    else:
        raise FileNotFoundError(
            f"{p}: not a model checkpoint (no {WEIGHTS_NAME}, no pytorch_model*.bin or safetensors index, "
            "no DeepSpeed `latest`/mp_rank_* files)"
        )
    with torch.device("meta"):
        shell = BaichuanForCausalLM(cfg)
    state = check_state_dict(shell, state, source)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return cfg, state


def load_pretrained(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: str | os.PathLike[str] | ModelConfig | None = None,
    attn_backend: str | None = None,
) -> BaichuanForCausalLM:
    """A ``BaichuanForCausalLM`` from any checkpoint ``load_checkpoint`` reads."""
    import torch

    from baichuan.model import BaichuanForCausalLM

    cfg, state = load_checkpoint(path, config)
    if attn_backend is not None:
        cfg.attn_backend = attn_backend
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = BaichuanForCausalLM(cfg)
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device)


# ---------------------------------------------------------------------------------------------
# writing a transformers folder
# ---------------------------------------------------------------------------------------------
def parse_size(size: str | int) -> int:
    """'2GB', '500MB', '10KB' or a byte count."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r} (e.g. 2GB, 500MB)")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


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
    ``dtype`` "auto" keeps the checkpoint's dtype (DeepSpeed consolidation gives float32)."""
    import torch
    from safetensors.torch import save_file

    from baichuan import Tokenizer

    out = Path(output)
    ckpt = Path(checkpoint)
    tok_path = Path(tokenizer) if tokenizer is not None else find_tokenizer(ckpt)
    if tok_path is None or not tok_path.is_file():
        raise FileNotFoundError(
            f"tokenizer model not found: {tok_path or ckpt / 'tokenizer.model'} "
            "(pass --tokenizer PATH to the SentencePiece .model)"
        )
    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")
    if out.resolve() == ckpt.resolve():
        raise ValueError("the output folder must differ from the checkpoint folder")

    cfg, state = load_checkpoint(ckpt, config)
    tok = Tokenizer.from_file(tok_path)
    if tok.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"vocabulary mismatch: tokenizer {tok_path} has {tok.vocab_size} pieces but the model's "
            f"vocab_size is {cfg.vocab_size}"
        )
    if dtype != "auto":
        target = getattr(torch, _DTYPES[dtype])
        state = {k: v.to(target) for k, v in state.items()}
    dtypes = {v.dtype for v in state.values()}
    torch_dtype = str(next(iter(dtypes))).removeprefix("torch.") if len(dtypes) == 1 else "float32"

    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = _shard({k: v.contiguous() for k, v in state.items()}, parse_size(max_shard_size))
    n = len(shards)
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
            "model_max_length": cfg.max_position_embeddings,
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
