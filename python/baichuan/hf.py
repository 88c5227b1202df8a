"""Hugging Face interop: the only module that knows transformers' key names and folder layouts.

* ``llama_config_from`` / ``to_llama_state_dict`` / ``llama_model_from``: our model as a
  transformers ``LlamaForCausalLM`` (``W_pack`` split into ``q_proj``/``k_proj``/``v_proj``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from baichuan.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from baichuan.model import BaichuanForCausalLM


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
