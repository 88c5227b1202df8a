"""Our native model folder: ``config.json`` (``ModelConfig.to_dict()``) + ``model.safetensors``.

    save_model(model, "out/model")                 # writes both files atomically (tmp + rename)
    model = load_model("out/model", device="cpu", dtype=torch.bfloat16)

The state dict uses the published parameter names (see ``baichuan.model``). Loading checks every
key and shape and names what differs. Weights are never unpickled: safetensors only here; the
official ``.bin`` layout is read by ``baichuan.hf`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baichuan.config import ModelConfig
from baichuan.errors import BaichuanError

if TYPE_CHECKING:
    import torch

    from baichuan.model import BaichuanForCausalLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
    """Load a native folder. ``dtype`` None keeps the stored dtype of the weights (per tensor)."""
    import torch

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
    state = load_safetensors(weights_path)
    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
    state = check_state_dict(model, state, str(weights_path))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device)


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
