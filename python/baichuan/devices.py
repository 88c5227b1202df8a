"""Device and dtype names on the command line: one table for ``generate``, ``eval`` and
``export-hf`` (``fp32``/``float32``, ``bf16``/``bfloat16``, ``fp16``/``float16``; ``auto``)."""

from __future__ import annotations

from typing import Any

from baichuan.errors import BaichuanError

# every accepted spelling -> torch's attribute name
DTYPE_NAMES: dict[str, str] = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
}
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)


def resolve_device(device: str | None) -> str:
    """``None`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def canonical_dtype(name: str) -> str:
    """``bf16`` -> ``bfloat16`` etc.; ``auto`` stays ``auto``; anything else is refused."""
    if name == "auto":
        return name
    if name not in DTYPE_NAMES:
        raise BaichuanError(f"unknown dtype {name!r} (have {', '.join(DTYPE_CHOICES)})")
    return DTYPE_NAMES[name]


def resolve_dtype(name: str | None, device: str) -> Any:
    """The torch dtype for ``name``; ``auto``/``None``: bfloat16 on CUDA, float32 elsewhere."""
    import torch

    canon = canonical_dtype(name or "auto")
    if canon == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, canon)
