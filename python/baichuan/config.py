"""Model configuration: one dataclass, the published Baichuan-7B values as defaults.

``ModelConfig()`` is Baichuan-7B as released (vocab 64000, hidden 4096, 32 layers, 32 heads,
SwiGLU 11008, RoPE base 10000, context 4096, untied embeddings, pad/bos/eos = 0/1/2).
``ModelConfig.preset(name, **overrides)`` gives named sizes; ``tiny`` and ``small`` are for tests
and CPU smoke runs.

The JSON form (``to_json_file``/``from_json_file``) is the ``config.json`` of our native model
folder (see ``baichuan.checkpoint``). It uses the same key names as the published Baichuan-7B
``config.json`` where they exist, so ``from_dict`` also accepts that file (unknown keys such as
``architectures`` or ``auto_map`` are ignored; see ``from_dict``).

RoPE scaling (longer context than the pre-training window)
    ``rope_scaling`` is None (plain RoPE) or a dict with transformers' keys and numbers
    (``rope_scaling``/``rope_parameters`` of a ``LlamaConfig``, without ``rope_theta``, which stays
    its own field): ``{"rope_type": "linear", "factor": F}``, ``{"rope_type": "dynamic", "factor": F}``
    or ``{"rope_type": "yarn", "factor": F, "original_max_position_embeddings": N}`` plus yarn's
    optional ``attention_factor``, ``beta_fast``, ``beta_slow``, ``mscale``, ``mscale_all_dim``,
    ``truncate``. ``factor`` must be > 1; an unknown type or key is refused (``RopeScalingError``).
    As in transformers, ``max_position_embeddings`` is the *pre-training* window for ``linear`` and
    ``dynamic`` (dynamic NTK starts rescaling past it) and the *extended* window for ``yarn`` (whose
    pre-training window is ``original_max_position_embeddings``, filled from
    ``max_position_embeddings`` when absent, as transformers does). ``context_window`` is the number
    of positions the model is meant to handle: ``max_position_embeddings`` without scaling, else
    ``max(max_position_embeddings, original window x factor)``. ``with_rope_scaling("yarn", 4)``
    is what ``baichuan train --rope-scaling yarn:4`` applies. The formulas live in
    ``baichuan.model.rope_inv_freq``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from baichuan.errors import BaichuanError

ATTN_BACKENDS = ("auto", "sdpa", "eager", "xformers")

# Keys of an upstream/HF config.json that mean the same thing under another name.
_ALIASES = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size"}

# RoPE scaling types and the keys each accepts (transformers' names; rope_theta is its own field).
ROPE_SCALING_TYPES = ("linear", "dynamic", "yarn")
_ROPE_KEYS: dict[str, frozenset[str]] = {
    "linear": frozenset({"rope_type", "factor"}),
    "dynamic": frozenset({"rope_type", "factor"}),
    "yarn": frozenset({
        "rope_type", "factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
        "beta_slow", "mscale", "mscale_all_dim", "truncate",
    }),
}


class RopeScalingError(BaichuanError, ValueError):
    """A RoPE scaling setting that is not one we implement (unknown type or key, factor <= 1)."""


class ContextLengthError(BaichuanError, ValueError):
    """A sequence longer than the model's context window (``ModelConfig.context_window``)."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_factor(factor: Any, what: str) -> float:
    if not _is_number(factor) or not math.isfinite(factor) or not factor > 1:
        raise RopeScalingError(f"{what}: the scaling factor must be a number > 1, got {factor!r}")
    return float(factor)


def parse_rope_scaling(spec: str, what: str = "--rope-scaling") -> tuple[str, float]:
    """``"yarn:4"`` -> ``("yarn", 4.0)``; one clear error for anything else."""
    kind, sep, factor_text = str(spec).partition(":")
    kind = kind.strip().lower()
    if not sep:
        raise RopeScalingError(
            f"{what} {spec!r}: expected TYPE:FACTOR, e.g. yarn:4 (types: {', '.join(ROPE_SCALING_TYPES)})"
        )
    if kind not in ROPE_SCALING_TYPES:
        raise RopeScalingError(
            f"{what} {spec!r}: unknown RoPE scaling type {kind!r} (known: {', '.join(ROPE_SCALING_TYPES)})"
        )
    try:
        factor = float(factor_text)
    except ValueError:
        raise RopeScalingError(f"{what} {spec!r}: the factor {factor_text!r} is not a number") from None
    return kind, _check_factor(factor, f"{what} {spec!r}")


def normalise_rope_scaling(value: Any, max_position_embeddings: int) -> dict[str, Any] | None:
    """A checked copy of a ``rope_scaling`` dict (``type`` read as ``rope_type``, yarn's
    ``original_max_position_embeddings`` filled in), or None for no/``default`` scaling."""
    what = "ModelConfig.rope_scaling"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RopeScalingError(f"{what} must be a dict such as {{'rope_type': 'yarn', 'factor': 4.0}}, got {value!r}")
    d = dict(value)
    if "type" in d:
        legacy = d.pop("type")
        d.setdefault("rope_type", legacy)
    d.pop("rope_theta", None)  # transformers >= 5 keeps rope_theta here; ours is its own field
    kind = d.get("rope_type")
    if kind in (None, "default"):
        extra = sorted(set(d) - {"rope_type"})
        if extra:
            raise RopeScalingError(f"{what}: key(s) {', '.join(extra)} given without a scaling rope_type "
                                   f"(one of {', '.join(ROPE_SCALING_TYPES)})")
        return None
    if kind not in ROPE_SCALING_TYPES:
        raise RopeScalingError(f"{what}: unknown RoPE scaling type {kind!r} (known: {', '.join(ROPE_SCALING_TYPES)})")
    unknown = sorted(set(d) - _ROPE_KEYS[kind])
    if unknown:
        raise RopeScalingError(
            f"{what}: key(s) {', '.join(unknown)} not supported for rope_type {kind!r} "
            f"(accepted: {', '.join(sorted(_ROPE_KEYS[kind]))})"
        )
    if "factor" not in d:
        raise RopeScalingError(f"{what}: rope_type {kind!r} needs a 'factor' (> 1)")
    d["factor"] = _check_factor(d["factor"], f"{what} ({kind})")
    if kind == "yarn":
        orig = d.setdefault("original_max_position_embeddings", max_position_embeddings)
        if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 0:
            raise RopeScalingError(f"{what}: original_max_position_embeddings must be a positive integer, got {orig!r}")
        for key in ("attention_factor", "beta_fast", "beta_slow"):
            v = d.get(key)
            if v is not None and (not _is_number(v) or not v > 0):
                raise RopeScalingError(f"{what}: {key} must be a number > 0, got {v!r}")
        for key in ("mscale", "mscale_all_dim"):
            v = d.get(key)
            if v is not None and not _is_number(v):
                raise RopeScalingError(f"{what}: {key} must be a number, got {v!r}")
        if "truncate" in d and not isinstance(d["truncate"], bool):
            raise RopeScalingError(f"{what}: truncate must be true or false, got {d['truncate']!r}")
    return d


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
    # None, or transformers' rope_scaling dict (module docstring): linear, dynamic (NTK) or yarn.
    rope_scaling: dict[str, Any] | None = None
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
        self.rope_scaling = normalise_rope_scaling(self.rope_scaling, self.max_position_embeddings)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ------------------------------------------------------------------ context window
    @property
    def original_window(self) -> int:
        """The pre-training window the scaling stretches (``max_position_embeddings`` unless yarn
        names ``original_max_position_embeddings``)."""
        if self.rope_scaling and "original_max_position_embeddings" in self.rope_scaling:
            return int(self.rope_scaling["original_max_position_embeddings"])
        return self.max_position_embeddings

    @property
    def context_window(self) -> int:
        """Positions the model is meant to handle (module docstring)."""
        if not self.rope_scaling:
            return self.max_position_embeddings
        return max(self.max_position_embeddings, int(self.original_window * self.rope_scaling["factor"]))

    def check_context(self, n_tokens: int, what: str) -> None:
        """Raise ``ContextLengthError`` when ``n_tokens`` positions exceed ``context_window``."""
        if n_tokens <= self.context_window:
            return
        if self.rope_scaling:
            how = (f"{self.original_window} x {self.rope_scaling['rope_type']} factor "
                   f"{self.rope_scaling['factor']:g}")
            hint = "use a larger scaling factor"
        else:
            how = "max_position_embeddings, no rope_scaling"
            hint = ("continue pre-training with `baichuan train --init-from MODEL --rope-scaling yarn:F "
                    "--max-length N` for a longer window")
        raise ContextLengthError(
            f"{what} is {n_tokens} tokens, past the model's context window of {self.context_window} ({how}); "
            f"shorten it or {hint}"
        )

    def rope_depends_on_length(self, n_tokens: int) -> bool:
        """True when the RoPE frequencies of an ``n_tokens`` call differ from those of a shorter
        prefix (dynamic NTK past ``max_position_embeddings``): a KV cache of the prefix then holds
        keys rotated differently from one full forward (see ``baichuan.model``)."""
        return bool(self.rope_scaling and self.rope_scaling["rope_type"] == "dynamic"
                    and n_tokens > self.max_position_embeddings)

    def with_rope_scaling(self, rope_type: str, factor: float) -> ModelConfig:
        """A copy scaled ``factor`` times past the pre-training window (``original_window``):
        yarn sets ``max_position_embeddings`` to the new window and records the original one;
        linear and dynamic keep ``max_position_embeddings`` at the original window, the length
        transformers' formulas read as the pre-training one."""
        if rope_type not in ROPE_SCALING_TYPES:
            raise RopeScalingError(
                f"unknown RoPE scaling type {rope_type!r} (known: {', '.join(ROPE_SCALING_TYPES)})"
            )
        factor = _check_factor(factor, f"rope scaling {rope_type}")
        orig = self.original_window
        scaling: dict[str, Any] = {"rope_type": rope_type, "factor": factor}
        max_pos = orig
        if rope_type == "yarn":
            scaling["original_max_position_embeddings"] = orig
            max_pos = int(orig * factor)
        return dataclasses.replace(self, rope_scaling=scaling, max_position_embeddings=max_pos)

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
        # transformers >= 5 style: {"rope_parameters": {"rope_type": ..., "rope_theta": ..., "factor": ...}};
        # older configs (and ours): "rope_scaling" next to "rope_theta".
        rope = data.get("rope_scaling")
        if rope is None:
            rope = data.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in data:
            values["rope_theta"] = rope["rope_theta"]
        values["rope_scaling"] = rope
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
        try:
            return cls.from_dict(data)
        except RopeScalingError as e:
            raise RopeScalingError(f"{os.fspath(path)}: {e}") from None


def scaled_for_training(config: ModelConfig, spec: str | None, max_length: int) -> ModelConfig:
    """``baichuan train --rope-scaling TYPE:FACTOR``: ``config.with_rope_scaling`` (None: unchanged),
    refusing a ``--max-length`` past the scaled window."""
    if not spec:
        return config
    kind, factor = parse_rope_scaling(spec)
    scaled = config.with_rope_scaling(kind, factor)
    scaled.check_context(max_length, "--max-length")
    return scaled


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
