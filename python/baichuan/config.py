"""Model configuration: one dataclass, the published Baichuan-7B values as defaults.

``ModelConfig()`` is Baichuan-7B as released (vocab 64000, hidden 4096, 32 layers, 32 heads,
SwiGLU 11008, RoPE base 10000, context 4096, untied embeddings, pad/bos/eos = 0/1/2).
``ModelConfig.preset(name, **overrides)`` gives named sizes; ``tiny`` and ``small`` are for tests
and CPU smoke runs.

The JSON form (``to_json_file``/``from_json_file``) is the ``config.json`` of our native model
folder (see ``baichuan.checkpoint``). It uses the same key names as the published Baichuan-7B
``config.json`` where they exist, so ``from_dict`` also accepts that file (unknown keys such as
``architectures`` or ``auto_map`` are ignored; see ``from_dict``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

ATTN_BACKENDS = ("auto", "sdpa", "eager", "xformers")

# Keys of an upstream/HF config.json that mean the same thing under another name.
_ALIASES = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size"}


@dataclass
class ModelConfig:
    """Architecture of a Baichuan-7B-style decoder (LLaMA layout with a fused ``W_pack`` QKV)."""

    vocab_size: int = 64000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    # Runtime choices (not architecture): attention kernel and activation checkpointing.
    attn_backend: str = "auto"
    gradient_checkpointing: bool = False
    model_type: str = field(default="baichuan", repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def positive(name: str) -> None:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)!r}")

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        ):
            positive(name)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dimension {self.head_dim} must be even for rotary embeddings")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(
                f"ModelConfig.attn_backend must be one of {', '.join(ATTN_BACKENDS)}, got {self.attn_backend!r}"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"only hidden_act='silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if v is not None and not (0 <= v < self.vocab_size):
                raise ValueError(f"ModelConfig.{name}={v} is outside the vocabulary (size {self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named size. ``7b`` is the published model; ``tiny``/``small`` are for tests and CPU runs."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        values = dict(PRESETS[name])
        values.update(overrides)
        return cls(**values)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict; keys that are not fields (``architectures``, ``auto_map``,
        ``torch_dtype``, ``use_cache``, ...) are ignored, so an upstream ``config.json`` loads."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            key = _ALIASES.get(key, key)
            if key in names:
                values[key] = value
        # transformers >= 4.45 style: {"rope_parameters": {"rope_theta": ...}}
        rope = data.get("rope_parameters") or data.get("rope_scaling")
        if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in data:
            values["rope_theta"] = rope["rope_theta"]
        kv_heads = data.get("num_key_value_heads")
        if kv_heads is not None and kv_heads != values.get("num_attention_heads", cls.num_attention_heads):
            raise ValueError(
                f"grouped-query attention (num_key_value_heads={kv_heads}) is not a Baichuan-7B layout"
            )
        return cls(**values)

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> ModelConfig:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"model config not found: {os.fspath(path)}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.fspath(path)}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{os.fspath(path)}: expected a JSON object")
        return cls.from_dict(data)


PRESETS: dict[str, dict[str, Any]] = {
    # The published Baichuan-7B (= the dataclass defaults).
    "7b": {},
    # Unit-test size: runs a forward pass in milliseconds on a CPU. Keeps the real vocabulary so
    # it pairs with the Baichuan-7B tokenizer; pass vocab_size= to shrink further.
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
    },
    # CPU smoke-training size (~ 40M parameters with the 64000 vocabulary, mostly embeddings).
    "small": {
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 1024,
    },
}
