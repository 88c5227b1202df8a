# Baichuan-7B configuration for transformers (trust_remote_code). Written by the `baichuan` package
# (`baichuan export-hf`); same keys as the published baichuan-7B config.json, plus `rope_scaling`
# (None, or transformers' dict: linear, dynamic, yarn) for models trained past 4096 tokens.
import transformers
from transformers import PretrainedConfig

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def _scaling(rope_scaling, rope_parameters):
    """The RoPE scaling dict without rope_theta (None for plain RoPE), from either key."""
    value = rope_scaling if rope_scaling is not None else rope_parameters
    if not value:
        return None
    value = {k: v for k, v in dict(value).items() if k != "rope_theta"}
    if "type" in value:
        value.setdefault("rope_type", value.pop("type"))
    return None if value.get("rope_type", "default") == "default" else value


class BaiChuanConfig(PretrainedConfig):
    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size=64000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        rope_scaling=None,
        rope_parameters=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        scaling = _scaling(rope_scaling, rope_parameters)
        if _TRANSFORMERS_MAJOR >= 5:  # `rope_scaling` is an alias of `rope_parameters` there
            self.rope_parameters = {**(scaling or {"rope_type": "default"}), "rope_theta": rope_theta}
        else:
            self.rope_scaling = scaling
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
