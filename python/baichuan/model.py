"""Baichuan-7B in PyTorch: RMSNorm, RoPE, fused ``W_pack`` attention with pluggable kernels, SwiGLU.

Interface (other modules rely on it; changes are listed here)::

    from baichuan.config import ModelConfig
    from baichuan.model import BaichuanForCausalLM

    model = BaichuanForCausalLM(ModelConfig.preset("tiny"))
    out = model(input_ids, attention_mask=None, position_ids=None, labels=None,
                past_key_values=None, use_cache=False, logits_to_keep=0, ce_chunk=0)
    out.logits           # (B, T, V); only the last ``logits_to_keep`` positions when that is > 0;
                         # None when the loss was chunked (labels with ce_chunk > 0)
    out.loss             # mean next-token cross entropy (fp32) against ``labels`` (below), or None
    out.past_key_values  # tuple over layers of (k, v), each (B, heads, past+T, head_dim); None unless use_cache

Labels (the one convention, for every caller: training, tests, benchmarks)
    ``labels`` are token ids aligned with ``input_ids`` and shifted inside the model, as in
    transformers: position t is scored against ``labels[:, t + 1]``; ``-100`` (``IGNORE_INDEX``)
    is left out of the mean. ``labels`` may have one column more than ``input_ids``: the token
    that follows the last input, so that the last position is scored too. Training reads windows
    of ``max_length + 1`` tokens ``x`` and calls ``model(x[:, :-1], labels=x, ce_chunk=N)``: every
    input position is scored, inputs stay ``max_length`` long. With ``labels`` exactly as long as
    ``input_ids`` the last position has no target (transformers' ``labels=input_ids``; the
    exported ``hf_remote`` model takes only that form and gives the same loss).
    ``ce_chunk > 0``: the LM head computes the loss chunk by chunk (``LMHead``: ``ce_chunk`` rows
    at a time, fp32 logits of one chunk only, gradients computed in the same pass) and returns no
    logits; under DeepSpeed ZeRO-3 it runs inside the head's own forward, where the weight is
    gathered. ``ce_chunk == 0``: the plain path, bf16/fp32 logits for every position, upcast to
    fp32, ``F.cross_entropy``; the logits are returned. The two agree to float rounding
    (tests/test_loss.py, also under ZeRO-3 on 2 ranks).

Parameter names are those of the published checkpoint: ``model.embed_tokens.weight``,
``model.layers.N.self_attn.W_pack.weight`` (rows: q, then k, then v; shape 3*hidden x hidden),
``model.layers.N.self_attn.o_proj.weight``, ``model.layers.N.mlp.{gate,up,down}_proj.weight``,
``model.layers.N.{input,post_attention}_layernorm.weight``, ``model.norm.weight``, ``lm_head.weight``.
The official release also stores ``...self_attn.rotary_emb.inv_freq`` buffers; we compute the
frequencies from the config instead (``baichuan.hf`` drops those keys on import).

Masks and positions
    ``attention_mask`` is a (B, past+T) 1/0 mask over *all* key positions (cached ones included),
    combined with causal masking. Any padding layout works (left padding for batched scoring,
    padding between a shared prefix and a question, right padding). When ``position_ids`` is None
    they are derived from the mask (``cumsum(mask) - 1``, so the first real token is position 0),
    or are ``past .. past+T-1`` without a mask. Query rows with no visible key (left pads) attend
    to every key instead, which keeps them finite; their outputs are meaningless and unused.

KV cache
    Plain tuples, so they are easy to slice and share: to reuse the cache of one prefix (batch 1)
    for a batch of B continuations, call ``expand_past_key_values(prefix_cache, B)`` and pass an
    ``attention_mask`` of shape (B, prefix_len + T) whose first prefix_len columns are 1.
    The cache is never modified in place: each call returns new tensors.

RoPE scaling (``ModelConfig.rope_scaling``: ``linear``, ``dynamic``, ``yarn``)
    ``rope_inv_freq`` computes transformers' frequencies and attention factor with its keys and
    defaults; logits equal ``LlamaForCausalLM`` given the same ``rope_parameters``
    (``baichuan.hf.llama_config_from``) within 1e-5 in fp32, past the original window and with a
    KV cache (tests/test_rope_scaling.py). ``dynamic`` (NTK) depends on the sequence length, and
    here it is a function of each call: the frequencies are those of
    ``seq_len = max(position_ids) + 1`` over the whole batch (past + new tokens with a cache), the
    plain ones while that is <= ``max_position_embeddings``. Keys already in a KV cache keep the
    rotation they were computed with, so decoding step by step past the window differs from one
    forward over the whole sequence (each step sees its own, larger base); transformers does the
    same. transformers' rotary module also remembers the longest length it has seen and keeps
    those frequencies for later, shorter calls until a call within the original window resets
    them; we keep no such state, so after a long call a shorter one past the window gives the
    frequencies of its own length (equal to a fresh transformers model; equal to a reused one
    whenever lengths never shrink, as in generation).

Attention backends (``ModelConfig.attn_backend``)
    ``eager``: reference math (scores in the compute dtype, softmax in fp32).
    ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``.
    ``xformers``: ``xformers.ops.memory_efficient_attention`` with ``LowerTriangularMask`` (a
    materialised additive bias when there is padding); needs CUDA and the ``[gpu]`` extra.
    ``auto``: ``sdpa`` on every device. On an H200 (../shared/gpu/README.md, 2026-11-26) causal
    attention fwd+bwd B=2 S=4096 H=32 D=128 bf16 ran at 471 TFLOP/s with SDPA/cuDNN against 271
    with xformers, and the 8-layer model trained at 42.6% vs 24.7% MFU, so ``auto`` does not pick
    xformers; ``scripts/gpu_check_model.py`` re-measures this on any card. On a CPU ``auto`` logs
    one line saying xformers is not used. Requesting ``xformers`` without CUDA raises.
    2026-11-26, 2-core CPU dev box (shared with other jobs, load ~6-7):
    ``python scripts/bench_model.py`` (preset small, B=4 T=512, fp32 forward, median of 3):
    eager 2556 ms, sdpa 1724 ms (an earlier ad-hoc run: 1930 vs 948), so sdpa is also the CPU
    choice of ``auto``.

Throughput accounting
    ``flops_per_token(config, seq_len) = 6 * N_nonembed + 12 * L * hidden * seq_len`` where
    N_nonembed is every parameter except the input embedding (``lm_head`` counts), as in
    ../shared/gpu/README.md; ``model.estimate_mfu(tokens_per_second, seq_len, peak_flops)``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right
from torch.utils.checkpoint import checkpoint

from baichuan.config import ModelConfig
from baichuan.units import H100_BF16_PEAK_TFLOPS

logger = logging.getLogger(__name__)

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]

# bf16 dense peak of one H100/H200 SXM (datasheet), in FLOP/s: baichuan.units has the one figure.
H100_BF16_PEAK_FLOPS = H100_BF16_PEAK_TFLOPS * 1e12


# Label value left out of the loss (as transformers and ``F.cross_entropy``'s default).
IGNORE_INDEX = -100


@dataclass
class CausalLMOutput:
    logits: torch.Tensor | None  # None only for the chunked loss (labels with ce_chunk > 0)
    loss: torch.Tensor | None = None
    past_key_values: KVCache | None = None


# ---------------------------------------------------------------------------------------------
# helpers usable without a model
# ---------------------------------------------------------------------------------------------
def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 * N_nonembed + 12 * L * hidden * seq_len."""
    h, L, ffn, V = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    per_layer = 4 * h * h + 3 * h * ffn + 2 * h
    n_nonembed = L * per_layer + h + V * h  # layers + final norm + lm_head
    return 6.0 * n_nonembed + 12.0 * L * h * seq_len


def past_length(past_key_values: KVCache | None) -> int:
    """Number of cached positions (0 for None)."""
    return 0 if not past_key_values else int(past_key_values[0][0].shape[2])


def expand_past_key_values(past_key_values: KVCache, batch_size: int) -> KVCache:
    """Repeat a batch-1 cache (e.g. a shared few-shot prefix) along the batch dimension.

    Uses ``expand`` (no copy); the next forward concatenates new keys onto it, which materialises
    one copy per row then.
    """
    out = []
    for k, v in past_key_values:
        if k.shape[0] != 1 and k.shape[0] != batch_size:
            raise ValueError(f"can only expand a batch-1 cache, this one has batch {k.shape[0]}")
        out.append((k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)))
    return tuple(out)


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_attn_backend(requested: str, device: torch.device) -> str:
    """The kernel actually used for ``requested`` on ``device`` (see the module docstring)."""
    if requested == "xformers":
        if device.type != "cuda":
            raise RuntimeError(
                f"attn_backend='xformers' needs a CUDA device, but the model runs on {device.type}; "
                "use attn_backend='sdpa', 'eager' or 'auto'"
            )
        if not xformers_available():
            raise RuntimeError(
                "attn_backend='xformers' but xformers is not installed; install it with "
                "`pip install 'baichuan-stack[gpu]'` or use attn_backend='sdpa'"
            )
        return "xformers"
    if requested in ("sdpa", "eager"):
        return requested
    if requested == "auto":
        if device.type != "cuda":
            logger.info("attention backend auto on %s: xformers needs CUDA, using sdpa", device.type)
        # On CUDA sdpa is chosen by measurement (module docstring); no line is logged there.
        return "sdpa"
    raise ValueError(f"unknown attention backend {requested!r}")


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


def _default_inv_freq(theta: float, dim: int, device: torch.device | None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def _dynamic_ntk_inv_freq(
    config: ModelConfig, theta: float, dim: int, seq_len: int | None, device: torch.device | None
) -> torch.Tensor:
    """transformers' ``_compute_dynamic_ntk_parameters``, op for op (so the fp32 roundings agree):
    the base grows to ``theta * (factor * L / max_pos - (factor - 1)) ** (dim / (dim - 2))`` with
    ``L = max(seq_len, max_position_embeddings)``; a python number at L <= max_pos (the
    frequencies transformers builds at init), an int64 tensor past it (what its forward passes)."""
    factor = config.rope_scaling["factor"]  # type: ignore[index]
    max_pos = config.max_position_embeddings
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    if seq_len is None or seq_len <= max_pos:
        base: float | torch.Tensor = theta * ((factor * max_pos / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    else:
        n = torch.tensor(seq_len, dtype=torch.int64, device=device)
        n = torch.maximum(n, torch.tensor(max_pos, dtype=torch.int64, device=device))
        base = theta * ((factor * n / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** exponents)


def _yarn_inv_freq(
    config: ModelConfig, theta: float, dim: int, device: torch.device | None
) -> tuple[torch.Tensor, float]:
    """transformers' ``_compute_yarn_parameters`` (YaRN, arXiv:2309.00071), op for op."""
    rs = config.rope_scaling
    assert rs is not None
    factor = rs["factor"]
    orig = rs["original_max_position_embeddings"]
    attention_factor = rs.get("attention_factor")
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp.to(device=device, dtype=torch.float)
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq, float(attention_factor)


def rope_inv_freq(
    config: ModelConfig, seq_len: int | None = None, device: torch.device | None = None
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, fp32 of shape head_dim/2; attention scaling) for ``config``'s RoPE.

    The formulas, keys and defaults are transformers' ``ROPE_INIT_FUNCTIONS`` (5.x):

    * none: ``1 / theta ** (2i / d)``; scaling 1.
    * ``linear``: those divided by ``factor`` (positions interpolated); scaling 1.
    * ``dynamic`` (NTK): ``theta`` raised as in ``_dynamic_ntk_inv_freq`` for ``seq_len`` past
      ``max_position_embeddings``, the plain frequencies up to it; scaling 1.
    * ``yarn``: per-dimension blend of the interpolated and original frequencies with a linear
      ramp between the dimensions that turn ``beta_fast`` and ``beta_slow`` times over
      ``original_max_position_embeddings``; cos and sin are multiplied by ``attention_factor``
      (default ``0.1 ln(factor) + 1``, or the ``mscale``/``mscale_all_dim`` ratio).
    """
    theta, dim = float(config.rope_theta), config.head_dim
    rs = config.rope_scaling
    kind = rs["rope_type"] if rs else None
    if kind is None:
        return _default_inv_freq(theta, dim, device), 1.0
    if kind == "linear":
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
        return (1.0 / (theta ** exponents)) / rs["factor"], 1.0  # type: ignore[index]
    if kind == "dynamic":
        return _dynamic_ntk_inv_freq(config, theta, dim, seq_len, device), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(config, theta, dim, device)
    raise ValueError(f"unknown rope_type {kind!r}")  # ModelConfig.validate refuses it earlier


def rope_cos_sin(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (B, T, head_dim), computed in fp32 (times ``attention_scaling``), cast to ``dtype``."""
    freqs = position_ids[..., None].float() * inv_freq.to(device=position_ids.device, dtype=torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if attention_scaling != 1.0:
        cos, sin = cos * attention_scaling, sin * attention_scaling
    return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# Mask passed between layers: None (no mask at all), "causal" (lower triangle aligned to the
# bottom-right corner: with T queries after a cache of S - T keys, query t sees keys <= S - T + t),
# or a bool tensor (B, 1, T, S), True where the query may attend to the key.
AttnMask = torch.Tensor | str | None


def _causal(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool: query t (the last T of S positions) may see keys 0 .. S - T + t."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


def _attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if mask == "causal":
        T, S = q.shape[2], k.shape[2]
        allowed = _causal(T, S, q.device)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    elif isinstance(mask, torch.Tensor):
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def _attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask) -> torch.Tensor:
    if mask == "causal":
        T, S = q.shape[2], k.shape[2]
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # Queries after a cache: causal from the bottom-right corner. PyTorch's CausalBias runs it in
        # the memory-efficient kernel without a materialised mask (on CUDA, a bool mask went to
        # cuDNN, which plans anew for every shape: see docs/performance.md, evaluation).
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(T, S))
    assert not isinstance(mask, str)  # "causal" is handled above
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _attention_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask) -> torch.Tensor:
    import xformers.ops as xops  # optional [gpu] extra; availability checked in resolve_attn_backend

    # xformers wants (B, T, H, D).
    qx, kx, vx = (t.transpose(1, 2) for t in (q, k, v))
    bias: object | None
    if mask is None:
        bias = None
    elif mask == "causal" and q.shape[2] == k.shape[2]:
        bias = xops.LowerTriangularMask()
    else:
        B, H, T, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        if mask == "causal":  # after a cache: bottom-right causal, as an explicit mask
            mask = _causal(T, S, q.device)[None, None]
        assert isinstance(mask, torch.Tensor)
        # An additive bias must be 8-aligned in its last dimension: allocate padded, then slice.
        padded = (S + 7) // 8 * 8
        full = torch.zeros(B, H, T, padded, dtype=q.dtype, device=q.device)
        bias = full[..., :S]
        bias.masked_fill_(~mask.expand(B, H, T, S), float("-inf"))
    out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias)
    return out.transpose(1, 2)


def varying_shape_attention(
    device: torch.device, allow_cudnn: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """Context for inference whose shapes change from call to call (scoring batches, decoding
    steps): on CUDA it keeps PyTorch's SDPA off the cuDNN kernel unless ``allow_cudnn``. cuDNN
    builds an execution plan for every new shape (tens of ms); flash / memory-efficient attention
    need none. Training (one fixed shape) keeps cuDNN, the fastest there. See docs/performance.md."""
    if device.type != "cuda" or allow_cudnn:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


_ATTENTION = {"eager": _attention_eager, "sdpa": _attention_sdpa, "xformers": _attention_xformers}


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttnMask,
        backend: str,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, _ = x.shape
        qkv = self.W_pack(x).view(B, T, 3, self.num_heads, self.head_dim)
        q = qkv[:, :, 0].transpose(1, 2)
        k = qkv[:, :, 1].transpose(1, 2)
        v = qkv[:, :, 2].transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        out = _ATTENTION[backend](q, k, v, mask)
        out = out.transpose(1, 2).reshape(B, T, self.hidden_size)
        return self.o_proj(out), (k, v)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttnMask,
        backend: str,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, backend, past)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class BaichuanModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


# ---------------------------------------------------------------------------------------------
# LM head and loss
# ---------------------------------------------------------------------------------------------
class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross entropy of ``hidden @ weight.T`` against ``targets`` without all the logits.

    Walks the rows in chunks of ``chunk_size``: that chunk's logits are computed in the hidden
    states' dtype and upcast to fp32 for the log-sum-exp, and the chunk's gradients
    (``softmax - onehot`` times the weight, and its transpose times the hidden states) are computed
    right there, so backward only scales the stored gradients (the logits are never recomputed).
    Peak extra memory: one chunk of fp32 logits (``chunk_size x vocab x 4`` bytes) plus an fp32
    weight-gradient accumulator (``vocab x hidden x 4``) when the weight is not fp32, against
    ``tokens x vocab x (2 + 4 + 4)`` bytes for bf16 logits, their fp32 copy and its gradient.
    No host synchronisation (the count of scored rows stays a tensor)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int
    ) -> torch.Tensor:
        n = hidden.shape[0]
        valid_all = targets != IGNORE_INDEX
        denom = valid_all.sum().clamp_(min=1).to(torch.float32)  # no scored row: loss 0
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h = hidden[start:end]
            valid = valid_all[start:end]
            safe_t = torch.where(valid, targets[start:end], torch.zeros_like(targets[start:end]))
            logits = (h @ weight.t()).float()  # (c, V) fp32: one chunk only
            lse = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, safe_t.unsqueeze(1)).squeeze(1)
            total += ((lse - target_logit) * valid).sum()
            if need_h or need_w:
                # d(sum of losses)/d logits = softmax - onehot on scored rows; / denom for the mean.
                probs = logits.sub_(lse.unsqueeze(1)).exp_()
                probs[torch.arange(end - start, device=probs.device), safe_t] -= 1.0
                probs.mul_((valid.to(probs.dtype) / denom).unsqueeze(1))
                g = probs.to(hidden.dtype)
                del probs, logits
                if grad_h is not None:
                    torch.matmul(g, weight, out=grad_h[start:end])
                if grad_w is not None:
                    grad_w += (g.t() @ h).float()
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.weight_dtype = weight.dtype
        return total / denom

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) if ctx.needs_input_grad[0] else None
        grad_w = saved.pop(0) if ctx.needs_input_grad[1] else None
        if grad_h is not None:
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_out.float()).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


@torch.compiler.disable
def _chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    # Runs eagerly under torch.compile (a Python loop over chunks; a graph break, not a trace).
    h = hidden.reshape(-1, hidden.shape[-1])
    return _ChunkedLinearCrossEntropy.apply(h, weight, targets.reshape(-1), chunk_size)


class LMHead(nn.Linear):
    """The output projection (``lm_head.weight``, vocab x hidden, no bias) and, given targets, the
    loss in one call, so that it runs inside this module's forward: under DeepSpeed ZeRO-3 the
    weight is gathered exactly there (and again for its backward).

    ``head(hidden)`` -> logits (B, T, V) in the weight's dtype.
    ``head(hidden, targets, ce_chunk)`` -> mean next-token cross entropy (fp32 scalar) of rows
    whose target is not ``IGNORE_INDEX``, ``targets`` (B, T) being the token each position
    predicts (:func:`next_token_targets`). ``ce_chunk > 0``: chunked (``_ChunkedLinearCrossEntropy``,
    the logits never whole); ``ce_chunk == 0``: the plain path, use :meth:`loss_from_logits`
    instead when the logits are wanted too.
    """

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__(hidden_size, vocab_size, bias=False)

    def forward(  # type: ignore[override]
        self, hidden: torch.Tensor, targets: torch.Tensor | None = None, ce_chunk: int = 0
    ) -> torch.Tensor:
        if targets is None:
            return super().forward(hidden)
        if ce_chunk > 0:
            return _chunked_cross_entropy(hidden, self.weight, targets, ce_chunk)
        return self.loss_from_logits(super().forward(hidden), targets)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The plain path: ``F.cross_entropy`` of the logits upcast to fp32 (all of them at once)."""
        flat = logits.reshape(-1, logits.shape[-1]).float()
        return F.cross_entropy(flat, targets.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX)


def next_token_targets(labels: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, seq_len) targets from ``labels`` in the model's one convention (module docstring,
    Labels): ``targets[:, t] = labels[:, t + 1]``, and ``IGNORE_INDEX`` for the last position
    when ``labels`` has no column past the input."""
    if labels.dim() != 2 or labels.shape[1] not in (seq_len, seq_len + 1):
        raise ValueError(
            f"labels must be (batch, seq) or (batch, seq + 1) with seq = {seq_len}, got {tuple(labels.shape)}"
        )
    targets = labels[:, 1:]
    if labels.shape[1] == seq_len:
        targets = F.pad(targets, (0, 1), value=IGNORE_INDEX)
    return targets


def _zero3_partitioned(params: list[nn.Parameter]) -> bool:
    """True for ZeRO-3 parameters whose data is currently partitioned away (not gathered)."""
    if not hasattr(params[0], "ds_id"):
        return False
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return any(getattr(p, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE for p in params)


@torch.no_grad()
def _init_module(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.Linear):
        module.weight.normal_(0.0, std)
    elif isinstance(module, nn.Embedding):
        module.weight.normal_(0.0, std)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, RMSNorm):
        module.weight.fill_(1.0)


def _build_mask(
    attention_mask: torch.Tensor | None, T: int, past_len: int, device: torch.device
) -> AttnMask:
    S = past_len + T
    if attention_mask is None or bool(attention_mask.all()):
        # After a cache "causal" is bottom-right aligned: query t sees keys <= past_len + t.
        return "causal" if T > 1 else None
    key_ok = attention_mask.to(device=device, dtype=torch.bool)  # (B, S)
    causal = _causal(T, S, device)
    allowed = causal[None, None] & key_ok[:, None, None, :]
    # Rows with no visible key (left pads) would give NaN: let them see everything instead.
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed


class BaichuanForCausalLM(nn.Module):
    """Baichuan-7B decoder with the LM head; see the module docstring for the call interface."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.model = BaichuanModel(config)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._resolved: dict[str, str] = {}
        self._rope_cache: dict[tuple[Any, ...], tuple[torch.Tensor, float]] = {}
        self.reset_parameters()

    # -------------------------------------------------------------- set-up
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) for linear and embedding weights (pad row zero), ones for norms.

        Under DeepSpeed ZeRO-3 (``deepspeed.zero.Init``) parameters are already partitioned when
        this runs: each module's parameters are then gathered, initialised on rank 0 and
        re-partitioned (the same values as without ZeRO for the same seed on rank 0)."""
        std = self.config.initializer_range
        for module in self.modules():
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            if _zero3_partitioned(params):
                import deepspeed

                with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                    if torch.distributed.get_rank() == 0:
                        _init_module(module, std)
            else:  # plain, or ZeRO-3 parameters the caller has already gathered
                _init_module(module, std)

    def attn_backend_for(self, device: torch.device) -> str:
        """The kernel used on ``device`` (resolved once per device type; may raise, see module doc)."""
        key = f"{self.config.attn_backend}:{device.type}"
        if key not in self._resolved:
            self._resolved[key] = resolve_attn_backend(self.config.attn_backend, device)
        return self._resolved[key]

    def rope_frequencies(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(inv_freq, attention scaling) for this call (``rope_inv_freq``; module docstring, RoPE
        scaling). Dynamic NTK reads ``seq_len = max(position_ids) + 1`` over the whole batch; all
        other cases are cached per device (a plain dict, so ``state_dict`` is unchanged)."""
        cfg = self.config
        device = position_ids.device
        seq_len = None
        if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "dynamic" and position_ids.numel():
            seq_len = int(position_ids.max()) + 1
            if seq_len > cfg.max_position_embeddings:
                return rope_inv_freq(cfg, seq_len, device)
        key = (str(device), cfg.rope_theta, cfg.head_dim, cfg.max_position_embeddings,
               tuple(sorted((cfg.rope_scaling or {}).items())))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_inv_freq(cfg, None, device)
        return self._rope_cache[key]

    def set_attn_backend(self, name: str) -> None:
        if name not in ("auto", "sdpa", "eager", "xformers"):
            raise ValueError(f"unknown attention backend {name!r}")
        self.config.attn_backend = name

    # -------------------------------------------------------------- accounting
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; ``exclude_embeddings`` leaves out the input embedding (not ``lm_head``)."""
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        if exclude_embeddings and not self.config.tie_word_embeddings:
            total -= self.model.embed_tokens.weight.numel()
        return total

    def flops_per_token(self, seq_len: int) -> float:
        return flops_per_token(self.config, seq_len)

    def estimate_mfu(
        self, tokens_per_second: float, seq_len: int, peak_flops: float = H100_BF16_PEAK_FLOPS
    ) -> float:
        """Model FLOPs utilisation (0..1) of a run processing ``tokens_per_second`` (all GPUs
        together divided by their number, i.e. per device) at sequence length ``seq_len``."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    # -------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        ce_chunk: int = 0,
    ) -> CausalLMOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        targets = None
        if labels is not None:
            if logits_to_keep > 0:
                raise ValueError("labels cannot be combined with logits_to_keep")
            if ce_chunk < 0:
                raise ValueError(f"ce_chunk must be >= 0, got {ce_chunk}")
            if labels.shape[0] != B:
                raise ValueError(f"labels have batch {labels.shape[0]}, input_ids {B}")
            targets = next_token_targets(labels, T).to(input_ids.device)
        device = input_ids.device
        past_len = past_length(past_key_values)
        if past_key_values is not None and len(past_key_values) != self.config.num_hidden_layers:
            raise ValueError(
                f"past_key_values has {len(past_key_values)} layers, the model {self.config.num_hidden_layers}"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (B, past_len + T):
            raise ValueError(
                f"attention_mask must be (batch, past + seq) = ({B}, {past_len + T}) covering cached "
                f"positions too, got {tuple(attention_mask.shape)}"
            )
        if position_ids is None:
            if attention_mask is not None:
                pos = attention_mask.long().cumsum(-1) - 1
                position_ids = pos.clamp_(min=0)[:, past_len:]
            else:
                position_ids = torch.arange(past_len, past_len + T, device=device).unsqueeze(0)
        position_ids = position_ids.to(device)
        if position_ids.shape[0] == 1 and B > 1:
            position_ids = position_ids.expand(B, -1)

        backend = self.attn_backend_for(device)
        mask = _build_mask(attention_mask, T, past_len, device)
        h = self.model.embed_tokens(input_ids)
        inv_freq, attention_scaling = self.rope_frequencies(position_ids)
        cos, sin = rope_cos_sin(position_ids, inv_freq, attention_scaling, h.dtype)

        checkpointing = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        presents: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, layer in enumerate(self.model.layers):
            past = past_key_values[i] if past_key_values is not None else None
            if checkpointing and past is None:
                h, present = checkpoint(layer, h, cos, sin, mask, backend, None, use_reentrant=False)
            else:
                h, present = layer(h, cos, sin, mask, backend, past)
            if use_cache:
                presents.append(present)
        h = self.model.norm(h)
        logits, loss = None, None
        if targets is not None and ce_chunk > 0:
            loss = self.lm_head(h, targets, ce_chunk)  # inside the head's forward (ZeRO-3 gathers there)
        else:
            if logits_to_keep > 0:
                h = h[:, -logits_to_keep:]
            logits = self.lm_head(h)
            if targets is not None:
                loss = LMHead.loss_from_logits(logits, targets)
        return CausalLMOutput(logits=logits, loss=loss, past_key_values=tuple(presents) if use_cache else None)

