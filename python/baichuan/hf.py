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
  directory (the one with ``latest``, or one tag folder such as ``step-N``/``global_stepN``).
  Nothing a user hands us is ever unpickled: a DeepSpeed checkpoint is read from the safetensors
  ``model/`` folder ``baichuan train`` writes into each tag; without one, ZeRO-1/2 weights come from
  ``mp_rank_00_model_states.pt`` read with ``torch.load(weights_only=True)``; optimizer states are
  never opened (so ZeRO-3 checkpoints without ``model/`` are refused). ``.bin`` weights are read
  with ``torch.load(weights_only=True)`` too; any failure is one ``CheckpointError`` line.
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

from baichuan.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    check_state_dict,
    load_safetensors,
    torch_load_plain,
)
from baichuan.config import ModelConfig
from baichuan.units import SizeError, parse_size

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


def _tensor_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a dict of named tensors")
    return dict(obj)


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    return _tensor_dict(torch_load_plain(path), path)


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
    d = Path(folder)
    for index_name, loader in (
        ("model.safetensors.index.json", load_safetensors),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        index_path = d / index_name
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text(encoding="utf-8"))
                weight_map = index["weight_map"]
            except UnicodeDecodeError:
                raise CheckpointError(f"{index_path}: not a weight index (not UTF-8 JSON text)") from None
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index_path}: not a weight index ({str(e)[:200]})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index_path}: not a weight index (weight_map must map names to files)")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                part = loader(_safe_child(d, shard, str(index_path)))
                state.update(part)
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise CheckpointError(f"{index_path}: keys listed but absent from their shards: {missing[:5]}")
            return _normalise_keys(state)
    if (d / "model.safetensors").is_file():
        return _normalise_keys(load_safetensors(d / "model.safetensors"))
    if (d / "pytorch_model.bin").is_file():
        return _normalise_keys(_load_bin(d / "pytorch_model.bin"))
    raise FileNotFoundError(
        f"{d}: no weights found (looked for model.safetensors[.index.json], pytorch_model.bin[.index.json])"
    )


def _valid_tag(tag: str) -> bool:
    return bool(tag) and "/" not in tag and "\\" not in tag and tag not in (".", "..")


def deepspeed_tag_dir(path: Path) -> Path:
    """The tag folder of a DeepSpeed checkpoint: ``path/<latest>`` for a checkpoints folder, else
    ``path`` itself (a ``step-N``/``global_stepN`` folder was given)."""
    if not (path / "latest").is_file():
        return path
    tag = (path / "latest").read_text(encoding="utf-8", errors="replace").strip()
    if not _valid_tag(tag):
        raise CheckpointError(f"{path / 'latest'}: {tag[:80]!r} is not a checkpoint tag (a folder name in {path})")
    if not (path / tag).is_dir():
        raise CheckpointError(f"{path / 'latest'} names {tag}, which is missing in {path}")
    return path / tag


def _deepspeed_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(weights, where they came from) of a DeepSpeed checkpoint, without unpickling anything:
    the tag's safetensors ``model/`` folder when present, else ZeRO-1/2 module weights from
    ``mp_rank_00_model_states.pt`` (``weights_only=True``). Optimizer states are never opened."""
    tag_dir = deepspeed_tag_dir(path)
    native = tag_dir / "model" / WEIGHTS_NAME
    if native.is_file():
        state = load_safetensors(native)
        logger.info("read %s (DeepSpeed's .pt files are not opened)", native)
        return _normalise_keys(state), str(native)
    states = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    zero3 = sorted(tag_dir.glob("zero_pp_rank_*_mp_rank_*_model_states.pt"))
    if not states and zero3:
        raise CheckpointError(_zero3_message(tag_dir))
    if not states:
        raise CheckpointError(f"{tag_dir}: no {Path('model') / WEIGHTS_NAME} and no mp_rank_00_model_states.pt")
    if len(states) > 1:
        raise CheckpointError(f"{tag_dir}: {len(states)} model-parallel ranks; only mp_rank_00 checkpoints are read")
    data = torch_load_plain(states[0])
    module = data.get("module") if isinstance(data, dict) else None
    state = _tensor_dict(module, states[0])
    if any(t.numel() == 0 for t in state.values()):  # ZeRO-3 placeholders: weights are in the optimizer shards
        raise CheckpointError(_zero3_message(tag_dir))
    logger.info("read the module weights of %s with weights_only=True (optimizer states are not opened)", states[0])
    return _normalise_keys(state), str(states[0])


def _zero3_message(tag_dir: Path) -> str:
    return (
        f"{tag_dir}: a ZeRO-3 checkpoint keeps its weights only in the optimizer states, which are "
        f"pickles and are not opened; use its safetensors folder {tag_dir / 'model'} (written by "
        "`baichuan train`), or consolidate a checkpoint you wrote yourself with DeepSpeed's zero_to_fp32.py"
    )


def _side_folders(path: Path) -> list[Path]:
    """Where a checkpoint's config.json / tokenizer.model may sit: the folder itself and, for a
    DeepSpeed checkpoint, the tag folder and its ``model/`` native folder (what ``baichuan train``
    writes: CKPT/latest, CKPT/step-N/{mp_rank_*, model/config.json, model/tokenizer.model})."""
    folders = [path]
    if (path / "latest").is_file():
        tag = (path / "latest").read_text(encoding="utf-8", errors="replace").strip()
        if _valid_tag(tag):
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


def checkpoint_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or ``FileNotFoundError``/``CheckpointError`` naming it (checked before
    anything else, so a mistyped folder is reported as such, not as a missing tokenizer)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if not p.is_dir():
        raise CheckpointError(f"{p}: expected a checkpoint folder, got a file")
    return p


def checkpoint_config(
    path: str | os.PathLike[str], config: str | os.PathLike[str] | ModelConfig | None = None
) -> ModelConfig:
    """The ``ModelConfig`` of any checkpoint ``load_checkpoint`` reads, without reading weights."""
    return _find_config(checkpoint_folder(path), config)


def load_checkpoint(
    path: str | os.PathLike[str], config: str | os.PathLike[str] | ModelConfig | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict with our key names) of a native, transformers or DeepSpeed checkpoint.

    The state dict is checked against the config (keys and shapes, naming what differs)."""
    import torch

    from baichuan.model import BaichuanForCausalLM

    p = checkpoint_folder(path)
    if is_deepspeed_checkpoint(p):
        cfg = _find_config(p, config)
        state, source = _deepspeed_state_dict(p)
    elif is_hf_folder(p):
        cfg = _find_config(p, config)
        state = load_hf_state_dict(p)
        source = f"transformers folder {p}"
    elif (p / WEIGHTS_NAME).is_file():
        cfg = _find_config(p, config)
        state = load_safetensors(p / WEIGHTS_NAME)
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
    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
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
        target = getattr(torch, _DTYPES[dtype])
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
