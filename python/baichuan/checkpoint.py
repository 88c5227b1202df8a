"""Every checkpoint layout has its owner here: the native model folder, a training run's
``checkpoints/`` folder (:class:`Checkpointer`) and the file manifests that guard it.

Native model folder: ``config.json`` (``ModelConfig.to_dict()``) + ``model.safetensors``.

    save_model(model, "out/model")                 # writes both files atomically (tmp + rename)
    model = load_model("out/model", device="cpu", dtype=torch.bfloat16)

The state dict uses the published parameter names (see ``baichuan.model``). Loading checks every
key and shape and names what differs. Weights are never unpickled: safetensors only here; the
official ``.bin`` layout is read with ``torch.load(weights_only=True)``.

Reading any checkpoint: :func:`load` (a ``BaichuanForCausalLM``; also ``load_pretrained``) and
:func:`load_checkpoint` ((config, state dict)) recognise our native folder, a transformers folder
(the official baichuan-7B layout with sharded ``pytorch_model-*.bin`` + ``pytorch_model.bin.index.json``,
a single ``pytorch_model.bin``, or safetensors with or without an index; what ``baichuan.hf.export_hf``
writes), and a DeepSpeed checkpoint directory (the one with ``latest``, or one tag folder such as
``step-N``/``global_stepN``). Nothing a user hands us is ever unpickled: a DeepSpeed checkpoint is
read from the safetensors ``model/`` folder ``baichuan train`` writes into each tag; without one,
ZeRO-1/2 weights come from ``mp_rank_00_model_states.pt`` read with ``torch.load(weights_only=True)``;
optimizer states are never opened (so ZeRO-3 checkpoints without ``model/`` are refused).
:func:`load_model` reads a native folder only. :func:`find_tokenizer` finds the ``tokenizer.model``
stored with any of them.

A run's checkpoints (``<output_dir>/checkpoints``, written by :class:`Checkpointer`)::

    latest                    tag of the newest complete checkpoint (written last)
    step-N/                   DeepSpeed checkpoint + trainer_state_rankR.json (data position,
                              counters) + rng_state_rankR.safetensors + config.json + model/
                              (native folder [+ tokenizer.model]) + files.sha256.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baichuan.config import ModelConfig
from baichuan.errors import BaichuanError, TrainingError

if TYPE_CHECKING:
    import torch

    from baichuan.model import BaichuanForCausalLM

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINTS_DIR = "checkpoints"  # a training run's checkpoints, under its --output-dir


class CheckpointError(BaichuanError, ValueError):
    """A model folder or state dict that does not fit the model."""


# ----------------------------------------------------------------------- reading without pickles
def _unpickler_detail(e: BaseException) -> str:
    """The informative part of torch's weights_only refusal, on one line (without its advice to retry
    with ``weights_only=False``, exactly what must not be done with a file one did not write)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    kept = [p for p in paragraphs if not p.startswith(boilerplate)] or paragraphs[:1] or [type(e).__name__]
    detail = re.split(r" was not an allowed global| Please use ", " ".join(kept))[0]
    return " ".join(detail.split())[:200]


def _first_sentence(e: BaseException) -> str:
    """An exception's first sentence on one line, with its type when the text alone says little."""
    text = " ".join(str(e).split())
    first = re.split(r"(?<=[a-z])\. ", text, maxsplit=1)[0][:200]
    return first if len(first) >= 20 else f"{type(e).__name__}: {first}".rstrip(": ")


def torch_load_plain(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: plain containers and tensors only, never
    arbitrary objects. Any failure is one ``CheckpointError`` line naming the file."""
    import pickle

    import torch

    check_recorded(path, " (not unpickled)")
    with warnings.catch_warnings():  # torch warns about pickle protocols on hostile files
        warnings.simplefilter("ignore")
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # mmap needs the zip format; old-format files load without it (still weights_only).
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{path}: refused: it holds more than plain tensors and was not unpickled "
                f"(torch.load weights_only=True: {_unpickler_detail(e)})"
            ) from None
        except Exception as e:  # truncated zip, not a torch file at all, ...
            raise CheckpointError(f"{path}: not a readable torch weights file ({_first_sentence(e)})") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file on the CPU; a truncated or foreign file is one ``CheckpointError`` line."""
    from safetensors.torch import load_file

    check_recorded(path)
    try:
        return load_file(str(path), device="cpu")
    except OSError:
        raise
    except Exception as e:  # safetensors_rust.SafetensorError: truncated file, bad header, a pickle
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_sentence(e)})") from None


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


def load_model(
    directory: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_backend: str | None = None,
) -> BaichuanForCausalLM:
    """Load a native folder only (anything else is refused, naming what is missing); :func:`load`
    reads every layout. ``dtype`` None keeps the stored dtype of the weights (per tensor)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"model folder not found: {d}")
    cfg_path, weights_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{d} is not a baichuan model folder: {p.name} is missing "
                f"(expected {CONFIG_NAME} + {WEIGHTS_NAME}; use `baichuan export-hf` or "
                "baichuan.checkpoint.load for other layouts)"
            )
    return load(d, device=device, dtype=dtype, attn_backend=attn_backend)


# ------------------------------------------------------ reading any checkpoint: load(path)
# Upstream buffers that are not parameters of our model.
_IGNORED_KEY = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
# Wrappers that prefix state-dict keys (DeepSpeed/DDP "module.", torch.compile "_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
    """A transformers folder (``export-hf``'s, the official release, or another architecture's):
    weights under transformers' names; a lone ``model.safetensors`` also needs a transformers
    ``config.json`` (our native folder has the same weight file name). The one test of this
    package (``evaluation.backends`` uses it too)."""
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
    if not isinstance(data, dict):
        return False
    # our native config.json is the ModelConfig dataclass: model_type and attn_backend, no architectures
    return "architectures" in data or "auto_map" in data or ("model_type" in data and "attn_backend" not in data)


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


def load(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: str | os.PathLike[str] | ModelConfig | None = None,
    attn_backend: str | None = None,
) -> BaichuanForCausalLM:
    """A ``BaichuanForCausalLM`` from any checkpoint :func:`load_checkpoint` reads: a native folder,
    a run's ``checkpoints/`` folder or one of its tags (DeepSpeed), a transformers folder (our
    export) or the official baichuan-7B folder."""
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


load_pretrained = load  # the name generate, eval and older callers use


# ------------------------------------------------------------------- file hashes of a checkpoint
MANIFEST_NAME = "files.sha256.json"
_HASH_CHUNK = 8 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)  # releases the GIL: files hash in parallel threads
    return h.hexdigest()


def _checkpoint_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (recursive, sorted, POSIX relative paths), the manifest aside."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() != MANIFEST_NAME
    )


def _hash_all(folder: Path, names: list[str], workers: int) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(names, pool.map(lambda n: _sha256(folder / n), names)))


def write_manifest(folder: str | os.PathLike[str], workers: int = 4) -> Path:
    """Record the size and sha256 of every file of a checkpoint folder in ``folder/files.sha256.json``
    (written atomically). Call it after the checkpoint's last file and before publishing it."""
    d = Path(folder)
    names = _checkpoint_files(d)
    hashes = _hash_all(d, names, workers)
    data = {
        "version": 1,
        "algorithm": "sha256",
        "files": {n: {"size": (d / n).stat().st_size, "sha256": hashes[n]} for n in names},
    }
    tmp = d / (MANIFEST_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / MANIFEST_NAME)
    return d / MANIFEST_NAME


def _read_manifest(d: Path) -> dict[str, dict[str, Any]]:
    path = d / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the checkpoint's files cannot be checked before DeepSpeed unpickles them"
        )
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        ok = isinstance(files, dict) and all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
            for v in files.values()
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: not a file manifest written by baichuan")
    for name in files:
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or "\\" in name:
            raise CheckpointError(f"{path}: refusing entry {name!r} (not a path inside {d})")
    return files


def manifest_problems(folder: str | os.PathLike[str], workers: int = 4) -> list[str]:
    """What differs between a checkpoint folder and its manifest, one entry per file (empty: all
    files are exactly those recorded). A missing or unreadable manifest raises ``CheckpointError``."""
    d = Path(folder)
    files = _read_manifest(d)
    present = set(_checkpoint_files(d))
    problems = []
    to_hash = []
    for name, rec in sorted(files.items()):
        p = d / name
        if name not in present:
            problems.append(f"{p} is missing")
        elif p.stat().st_size != rec["size"]:
            problems.append(f"{p} has changed since the checkpoint was saved (size {p.stat().st_size}, recorded {rec['size']})")
        else:
            to_hash.append(name)
    hashes = _hash_all(d, to_hash, workers)
    problems += [
        f"{d / n} has changed since the checkpoint was saved (sha256 differs from {MANIFEST_NAME})"
        for n in to_hash if hashes[n] != files[n]["sha256"]
    ]
    problems += [f"{d / n} was not recorded when the checkpoint was saved" for n in sorted(present - set(files))]
    return problems


def check_recorded(path: str | os.PathLike[str], refused: str = "") -> None:
    """When ``path`` lies in a checkpoint folder with a ``files.sha256.json`` (the folder itself or
    up to two levels above, as ``step-N/model/model.safetensors``), check its size and sha256 against
    the record before anything reads it: ``CheckpointError`` naming the file when it changed. Files of
    folders without a manifest (not written by `baichuan train`) are not checked."""
    p = Path(path)
    for d in list(p.parents)[:3]:
        if (d / MANIFEST_NAME).is_file():
            break
    else:
        return
    name = p.resolve().relative_to(d.resolve()).as_posix() if p.resolve().is_relative_to(d.resolve()) else None
    try:
        files = _read_manifest(d)
    except CheckpointError:
        return  # not ours to judge here; --resume refuses an unreadable manifest
    rec = files.get(name or "")
    if rec is None:
        return
    size = p.stat().st_size
    if size != rec["size"] or _sha256(p) != rec["sha256"]:
        what = f"size {size}, recorded {rec['size']}" if size != rec["size"] else f"sha256 differs from {d / MANIFEST_NAME}"
        raise CheckpointError(f"{p} has changed since the checkpoint was saved ({what}): damaged or replaced; refused{refused}")


def verify_manifest(folder: str | os.PathLike[str], workers: int = 4) -> None:
    """Raise ``CheckpointError`` naming the first file that is missing, changed or unrecorded."""
    problems = manifest_problems(folder, workers)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{problems[0]}{more}; refusing to load it")


# ----------------------------------------------------------------------- a run's checkpoints/ folder
def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def step_tag(step: int) -> str:
    return f"step-{step}"


def latest_tag(ckpt_dir: Path) -> str | None:
    p = ckpt_dir / "latest"
    if not p.is_file():
        return None
    tag = p.read_text(encoding="utf-8").strip()
    if not tag or "/" in tag or tag.startswith("."):
        raise TrainingError(f"{p}: does not name a checkpoint ({tag!r})")
    if not (ckpt_dir / tag).is_dir():
        raise TrainingError(f"{p} names {tag}, but {ckpt_dir / tag} does not exist")
    return tag


def latest_model_dir(output_dir: str | os.PathLike[str]) -> Path:
    """The native model folder of a run's newest complete checkpoint (for generate/export-hf)."""
    ckpt = Checkpointer.of_run(output_dir)
    tag = ckpt.latest()
    if tag is None:
        raise TrainingError(f"{output_dir}: no checkpoint yet ({ckpt.directory / 'latest'} is missing)")
    model = ckpt.model_dir(tag)
    if not (model / CONFIG_NAME).is_file():
        raise TrainingError(f"{ckpt.directory / tag}: the native model folder is missing")
    return model


def prune_checkpoints(ckpt_dir: Path, keep_last: int, protect: str) -> list[str]:
    """Delete ``step-N`` folders beyond the newest ``keep_last`` (never ``protect``)."""
    tags = []
    for p in ckpt_dir.glob("step-*"):
        try:
            tags.append((int(p.name.split("-", 1)[1]), p.name))
        except ValueError:
            continue
    tags.sort()
    removed = []
    for _, name in tags[: max(0, len(tags) - keep_last)]:
        if name != protect:
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)
            removed.append(name)
    return removed


def save_rng(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(path))


def load_rng(path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainingError(f"cannot resume: {path} is missing")
    t = load_file(str(path))
    torch.set_rng_state(t["torch_cpu"])
    if "torch_cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["torch_cuda"])


def save_native(engine: Any, zero_stage: int, out: Path, is_main: bool, tokenizer: str | None) -> None:
    """The native model folder (rank 0), gathering ZeRO-3 partitions first."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if is_main:
                save_model(module, out)
    elif is_main:
        save_model(module, out)
    if is_main and tokenizer:
        shutil.copyfile(tokenizer, out / "tokenizer.model")


class Checkpointer:
    """One rank's view of a run's ``checkpoints/`` folder: choose, read, save and prune checkpoints
    (layout in the module docstring). ``barrier`` synchronises the ranks (``dist.barrier``)."""

    def __init__(self, directory: Path, rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], object] | None = None) -> None:
        self.directory = Path(directory)
        self.rank, self.world_size = rank, world_size
        self.barrier: Callable[[], object] = barrier or (lambda: None)

    @classmethod
    def of_run(cls, output_dir: str | os.PathLike[str], rank: int = 0, world_size: int = 1,
               barrier: Callable[[], object] | None = None) -> Checkpointer:
        """The checkpoints of the run in ``output_dir`` (``OUTPUT/checkpoints/``)."""
        return cls(Path(output_dir) / CHECKPOINTS_DIR, rank, world_size, barrier)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def latest(self) -> str | None:
        return latest_tag(self.directory)

    def latest_if_any(self) -> str | None:
        """``latest`` when the file exists (a damaged one still raises)."""
        return latest_tag(self.directory) if (self.directory / "latest").is_file() else None

    def has_any(self) -> bool:
        return (self.directory / "latest").exists() or any(self.directory.glob("step-*"))

    def prune(self, keep_last: int, protect: str) -> list[str]:
        return prune_checkpoints(self.directory, keep_last, protect)

    def model_dir(self, tag: str) -> Path:
        """The native model folder of checkpoint ``tag``."""
        return self.directory / tag / "model"

    def state_file(self, tag: str, rank: int) -> Path:
        return self.directory / tag / f"trainer_state_rank{rank:05d}.json"

    def rng_file(self, tag: str) -> Path:
        return self.directory / tag / f"rng_state_rank{self.rank:05d}.safetensors"

    def named(self, tag: str) -> str:
        """``tag`` (--resume's checkpoint chosen by the launcher), which must exist."""
        if not (self.directory / tag).is_dir():
            raise TrainingError(f"cannot resume: {self.directory / tag} is missing")
        return tag

    def latest_verified(self, check: bool) -> str | None:
        """``latest``, its files checked against the manifest when ``check`` (local rank 0)."""
        tag = self.latest()
        if tag is not None and check:
            verify_manifest(self.directory / tag)
        return tag

    def trainer_state(self, tag: str, zero_stage: int) -> dict[str, Any]:
        """This rank's trainer state (data position, counters) of checkpoint ``tag``. With another
        number of ranks (ZeRO-0 only), rank 0's data position is the global one (shards, mixtures)."""
        d = self.directory / tag
        first_state = self.state_file(tag, 0)
        saved_world = self.world_size
        if first_state.is_file():
            saved_world = int(json.loads(first_state.read_text(encoding="utf-8")).get("world_size", self.world_size))
        if saved_world != self.world_size and zero_stage > 0:
            raise TrainingError(
                f"cannot resume {d} with {self.world_size} rank(s): it was saved by {saved_world} ranks with "
                f"ZeRO-{zero_stage}, whose optimizer state DeepSpeed cannot re-partition; resume with {saved_world} ranks "
                "(a mixture's data position itself carries over to any number of ranks; docs/training.md)"
            )
        state_file = self.state_file(tag, self.rank if saved_world == self.world_size else 0)
        if not state_file.is_file():
            raise TrainingError(f"cannot resume from {d}: {state_file.name} is missing (incomplete checkpoint?)")
        return dict(json.loads(state_file.read_text(encoding="utf-8")))

    def load(self, engine: Any, tag: str, step: int) -> None:
        """DeepSpeed's engine state and this rank's RNG state of checkpoint ``tag`` (saved at ``step``)."""
        load_path, _ = engine.load_checkpoint(str(self.directory), tag=tag)
        if load_path is None:
            raise TrainingError(f"DeepSpeed could not load the checkpoint {self.directory / tag}")
        load_rng(self.rng_file(tag))
        if engine.global_steps != step:
            raise TrainingError(f"{self.directory / tag}: DeepSpeed is at step {engine.global_steps}, trainer state at {step}")

    def save(self, step: int, engine: Any, state: dict[str, Any], *, config: ModelConfig, zero_stage: int,
             tokenizer: str | None, client_state: dict[str, Any], keep_last: int,
             before_write: Callable[[Path], None] | None = None) -> tuple[Path, list[str]]:
        """Write checkpoint ``step-<step>`` on every rank, then (rank 0) its manifest, ``latest`` and
        the pruning; returns the folder and the tags removed."""
        t = step_tag(step)
        tag_dir = self.directory / t
        if self.is_main and tag_dir.is_dir() and (not (self.directory / "latest").is_file() or self.latest() != t):
            shutil.rmtree(tag_dir)  # left by a save that did not complete (a failure, then a restart)
        self.barrier()
        tag_dir.mkdir(parents=True, exist_ok=True)
        if before_write is not None:
            before_write(tag_dir)
        write_atomic(self.state_file(t, self.rank), json.dumps(state) + "\n")
        save_rng(self.rng_file(t))
        engine.save_checkpoint(str(self.directory), tag=t, client_state=client_state, save_latest=False)
        save_native(engine, zero_stage, tag_dir / "model", self.is_main, tokenizer)
        if self.is_main:  # beside the DeepSpeed files too, where `baichuan export-hf CHECKPOINTS_DIR` looks
            config.to_json_file(tag_dir / CONFIG_NAME)
        self.barrier()
        removed: list[str] = []
        if self.is_main:
            write_manifest(tag_dir)  # verified before --resume lets DeepSpeed unpickle these files
            write_atomic(self.directory / "latest", t + "\n")
            removed = self.prune(keep_last, protect=t)
        return tag_dir, removed
