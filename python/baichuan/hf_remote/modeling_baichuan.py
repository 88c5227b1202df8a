# Baichuan-7B for transformers (trust_remote_code). Written by the `baichuan` package (`baichuan
# export-hf`). Self-contained: needs torch and transformers only. Parameter names are those of the
# published baichuan-7B checkpoint (fused `W_pack` = [q; k; v]). The math is the same as
# `baichuan.model` (tests/test_hf.py checks logits and generated tokens against it), RoPE scaling
# (`rope_scaling`: linear, dynamic NTK, yarn, transformers' keys and formulas) included
# (tests/test_rope_scaling.py).

import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from transformers import GenerationMixin
except ImportError:  # transformers < 4.45: PreTrainedModel carries generate()
    GenerationMixin = object  # type: ignore[misc,assignment]

from .configuration_baichuan import BaiChuanConfig

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# transformers >= 5 names the cache `cache` (`past_key_values` before).
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _new_cache(config):
    from transformers import DynamicCache

    return DynamicCache()


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


def rope_scaling_of(config):
    """The config's RoPE scaling dict (``rope_type`` linear, dynamic or yarn), or None for plain RoPE.
    transformers >= 5 keeps it as ``rope_parameters`` (with ``rope_theta``), older ones as ``rope_scaling``."""
    rs = None
    for name in ("rope_parameters", "rope_scaling"):
        try:
            rs = getattr(config, name, None)
        except AttributeError:
            rs = None
        if rs:
            break
    if not rs:
        return None
    rs = dict(rs)
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind in (None, "default"):
        return None
    if kind not in ("linear", "dynamic", "yarn"):
        raise ValueError(f"rope_scaling: unknown RoPE scaling type {kind!r} (known: linear, dynamic, yarn)")
    rs["rope_type"] = kind
    return rs


def _yarn(config, rs, theta, dim, device):
    factor = rs["factor"]
    orig = rs.get("original_max_position_embeddings") or config.max_position_embeddings
    attention_factor = rs.get("attention_factor")
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")

    def get_mscale(scale, m=1):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolation_factor = 1 - ramp.to(device=device, dtype=torch.float)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_factor) + (1.0 / pos_freqs) * extrapolation_factor
    return inv_freq, float(attention_factor)


def rope_inv_freq(config, seq_len, device):
    """(inverse frequencies, attention scaling): transformers' formulas for default, linear,
    dynamic (NTK, from ``seq_len``) and yarn RoPE; the same as ``baichuan.model.rope_inv_freq``."""
    theta = float(config.rope_theta)
    dim = config.hidden_size // config.num_attention_heads
    rs = rope_scaling_of(config)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    if rs is None:
        return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)), 1.0
    kind = rs["rope_type"]
    if kind == "linear":
        return (1.0 / (theta ** exponents)) / rs["factor"], 1.0
    if kind == "dynamic":
        factor, max_pos = rs["factor"], config.max_position_embeddings
        if seq_len is None or seq_len <= max_pos:
            base = theta * ((factor * max_pos / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        else:
            n = torch.maximum(torch.tensor(seq_len, dtype=torch.int64, device=device),
                              torch.tensor(max_pos, dtype=torch.int64, device=device))
            base = theta * ((factor * n / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** exponents), 1.0
    return _yarn(config, rs, theta, dim, device)


def _rotary(position_ids, config, dtype):
    """cos/sin (B, T, head_dim). Dynamic NTK uses seq_len = max(position_ids) + 1 of this call."""
    device = position_ids.device
    rs = rope_scaling_of(config)
    seq_len = int(position_ids.max()) + 1 if rs and rs["rope_type"] == "dynamic" and position_ids.numel() else None
    inv_freq, scaling = rope_inv_freq(config, seq_len, device)
    freqs = position_ids[..., None].float() * inv_freq.to(device=device, dtype=torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if scaling != 1.0:
        cos, sin = cos * scaling, sin * scaling
    return cos.to(dtype), sin.to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        qkv = self.W_pack(x).view(B, T, 3, self.num_heads, self.head_dim)
        q = _apply_rotary(qkv[:, :, 0].transpose(1, 2), cos, sin)
        k = _apply_rotary(qkv[:, :, 1].transpose(1, 2), cos, sin)
        v = qkv[:, :, 2].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if isinstance(mask, str):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.hidden_size))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def _build_mask(attention_mask, T, past_len, device):
    S = past_len + T
    if attention_mask is None or bool(attention_mask.all()):
        if past_len == 0:
            return "causal" if T > 1 else None
        if T == 1:
            return None
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(past_len)[None, None]
    key_ok = attention_mask[:, -S:].to(device=device, dtype=torch.bool)
    allowed = torch.ones(T, S, dtype=torch.bool, device=device).tril(past_len)[None, None] & key_ok[:, None, None, :]
    return allowed | ~allowed.any(dim=-1, keepdim=True)


class BaiChuanPreTrainedModel(PreTrainedModel):
    config_class = BaiChuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)


class BaiChuanModel(BaiChuanPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=False):
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = h.shape[:2]
        if use_cache and cache is None:
            cache = _new_cache(self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past_len, past_len + T, device=h.device).unsqueeze(0)
        if position_ids.shape[0] != B:
            position_ids = position_ids.expand(B, -1)
        mask = _build_mask(attention_mask, T, past_len, h.device)
        cos, sin = _rotary(position_ids.to(h.device), self.config, h.dtype)
        checkpointing = self.gradient_checkpointing and self.training and cache is None
        for layer in self.layers:
            if checkpointing:
                h = self._gradient_checkpointing_func(layer.__call__, h, cos, sin, mask, None)
            else:
                h = layer(h, cos, sin, mask, cache)
        return self.norm(h), cache


class BaiChuanForCausalLM(BaiChuanPreTrainedModel, GenerationMixin):
    if _TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]  # type: ignore[assignment]

    def __init__(self, config):
        super().__init__(config)
        self.model = BaiChuanModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, past_key_values=None, return_dict=None, **kwargs):
        if cache is None:
            cache = past_key_values
        if isinstance(cache, (tuple, list)):
            from transformers import DynamicCache

            cache = DynamicCache.from_legacy_cache(tuple(cache))
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        h, cache = self.model(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
