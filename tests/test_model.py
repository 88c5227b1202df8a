"""Baichuan model vs transformers' LlamaForCausalLM (a reference no one here wrote), backends, cache."""

from __future__ import annotations

import logging

import pytest
import torch

from baichuan.config import ModelConfig
from baichuan.model import (
    BaichuanForCausalLM,
    LMHead,
    expand_past_key_values,
    flops_per_token,
    next_token_targets,
    resolve_attn_backend,
)

transformers = pytest.importorskip("transformers")
from baichuan.hf import llama_model_from  # noqa: E402

CONFIGS = [
    dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, vocab_size=320),
    dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=3, vocab_size=500),
    dict(hidden_size=128, intermediate_size=344, num_hidden_layers=1, num_attention_heads=8, vocab_size=1000,
         rope_theta=500.0, rms_norm_eps=1e-5),
]


def make(seed: int = 0, **kw) -> BaichuanForCausalLM:
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("tiny", **kw)
    model = BaichuanForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so a wrong norm placement shows
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.uniform_(0.5, 1.5)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_parameter_names_match_published_checkpoint():
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", vocab_size=100))
    names = set(model.state_dict())
    h = model.config.hidden_size
    for n in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.W_pack.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ):
        assert n in names
    assert len(names) == 3 + 7 * 2
    assert tuple(model.state_dict()["model.layers.0.self_attn.W_pack.weight"].shape) == (3 * h, h)


def test_7b_config_and_parameter_count():
    cfg = ModelConfig()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (64000, 4096, 11008)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.max_position_embeddings) == (32, 32, 4096)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert cfg.rope_theta == 10000.0 and cfg.rms_norm_eps == 1e-6 and not cfg.tie_word_embeddings
    with torch.device("meta"):
        model = BaichuanForCausalLM(cfg)
    # Published Baichuan-7B: 7,000,559,616 parameters.
    assert model.num_parameters() == 7_000_559_616
    assert model.num_parameters(exclude_embeddings=True) == 7_000_559_616 - 64000 * 4096
    # FLOPs/token formula of ../shared/gpu/README.md, checked against its 8-layer row:
    # 421 TFLOP/s at 32,654 tok/s, seq 4096.
    eight = ModelConfig(num_hidden_layers=8)
    assert abs(flops_per_token(eight, 4096) * 32654 / 1e12 - 421) < 1.0
    with torch.device("meta"):
        m8 = BaichuanForCausalLM(eight)
    assert abs(m8.estimate_mfu(32654, 4096) - 0.426) < 0.002


def test_config_roundtrip(tmp_path):
    cfg = ModelConfig.preset("tiny", vocab_size=123, attn_backend="eager")
    cfg.to_json_file(tmp_path / "c.json")
    assert ModelConfig.from_json_file(tmp_path / "c.json") == cfg
    assert ModelConfig.from_dict({**cfg.to_dict(), "architectures": ["X"], "auto_map": {}}) == cfg
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig.preset("tiny", num_attention_heads=5)
    with pytest.raises(ValueError, match="attn_backend"):
        ModelConfig(attn_backend="flash")
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("13b")


@pytest.mark.parametrize("cfg_kw", CONFIGS)
@pytest.mark.parametrize("seq_len", [1, 7, 33])
def test_logits_and_loss_equal_llama(cfg_kw, seq_len):
    model = make(1, attn_backend="eager", **cfg_kw)
    ref = llama_model_from(model).eval()
    g = torch.Generator().manual_seed(seq_len)
    ids = torch.randint(0, cfg_kw["vocab_size"], (2, seq_len), generator=g)
    labels = ids.clone()
    labels[0, : seq_len // 2] = -100
    with torch.no_grad():
        ours = model(ids, labels=labels)
        theirs = ref(input_ids=ids, labels=labels)
    assert rel_err(ours.logits, theirs.logits) < 1e-5
    if seq_len > 1:
        assert abs(float(ours.loss) - float(theirs.loss)) <= 1e-5 * abs(float(theirs.loss))
        with torch.no_grad():  # the chunked LM-head loss: the same labels, the same number
            chunked = model(ids, labels=labels, ce_chunk=5)
        assert chunked.logits is None
        assert abs(float(chunked.loss) - float(theirs.loss)) <= 1e-5 * abs(float(theirs.loss))
    for backend in ("sdpa", "eager"):
        model.set_attn_backend(backend)
        with torch.no_grad():
            assert rel_err(model(ids).logits, theirs.logits) < 1e-5


def test_left_padding_matches_llama_and_unpadded():
    model = make(2, vocab_size=300)
    ref = llama_model_from(model).eval()
    torch.manual_seed(3)
    lens = [9, 5, 1]
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    mask = torch.zeros(len(lens), T, dtype=torch.long)
    rows = [torch.randint(3, 300, (n,)) for n in lens]
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    for backend in ("eager", "sdpa"):
        model.set_attn_backend(backend)
        with torch.no_grad():
            out = model(ids, attention_mask=mask).logits
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            theirs = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            for i, r in enumerate(rows):
                alone = model(r[None]).logits[0]
                assert rel_err(out[i, T - len(r):], alone) < 1e-5
                assert rel_err(out[i, T - len(r):], theirs[i, T - len(r):]) < 1e-5
        assert torch.isfinite(out).all()


def test_loss_ignores_minus_100_and_matches_cross_entropy():
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[1, 2:] = -100
    want = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.equal(LMHead.loss_from_logits(logits[:, :-1], next_token_targets(labels, 4)), want)
    got = LMHead.loss_from_logits(logits, next_token_targets(labels, 5))  # last position: -100
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_eager_and_sdpa_agree_forward_and_backward():
    torch.manual_seed(0)
    ids = torch.randint(0, 320, (2, 40))
    grads = {}
    outs = {}
    for backend in ("eager", "sdpa"):
        model = make(4, vocab_size=320, attn_backend=backend).train()
        out = model(ids, labels=ids)
        out.loss.backward()
        outs[backend] = out.logits.detach()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert rel_err(outs["sdpa"], outs["eager"]) < 1e-5
    for n, g in grads["eager"].items():
        assert rel_err(grads["sdpa"][n], g) < 1e-4, n


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 320, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = make(5, vocab_size=320, gradient_checkpointing=ckpt).train()
        model(ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_kv_cache_equals_full_recompute(backend):
    model = make(6, vocab_size=320, attn_backend=backend)
    torch.manual_seed(1)
    ids = torch.randint(0, 320, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)
        pieces = [out.logits]
        past = out.past_key_values
        out = model(ids[:, 5:9], past_key_values=past, use_cache=True)  # several tokens at once
        pieces.append(out.logits)
        past = out.past_key_values
        for t in range(9, 12):  # then one at a time
            out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            pieces.append(out.logits)
            past = out.past_key_values
    assert rel_err(torch.cat(pieces, 1), full) < 1e-5
    assert past[0][0].shape == (2, 4, 12, 16)


def test_shared_prefix_cache_expands_over_batch_with_padding():
    """The evaluation pattern: one few-shot prefix, its cache repeated for a padded batch."""
    model = make(7, vocab_size=320)
    torch.manual_seed(2)
    prefix = torch.randint(3, 320, (1, 10))
    qs = [torch.randint(3, 320, (n,)) for n in (4, 1, 6)]
    T = 6
    with torch.no_grad():
        pre = model(prefix, use_cache=True)
        past = expand_past_key_values(pre.past_key_values, len(qs))
        ids = torch.zeros(len(qs), T, dtype=torch.long)
        mask = torch.ones(len(qs), 10 + T, dtype=torch.long)
        for i, q in enumerate(qs):  # left-pad each question: pads sit between prefix and question
            ids[i, T - len(q):] = q
            mask[i, 10:10 + T - len(q)] = 0
        out = model(ids, attention_mask=mask, past_key_values=past, use_cache=True)
        for i, q in enumerate(qs):
            alone = model(torch.cat([prefix[0], q])[None]).logits[0, -1]
            assert rel_err(out.logits[i, -1], alone) < 1e-5
        # and decoding continues with the padded cache
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask2 = torch.cat([mask, torch.ones(len(qs), 1, dtype=torch.long)], 1)
        out2 = model(nxt, attention_mask=mask2, past_key_values=out.past_key_values)
        for i, q in enumerate(qs):
            alone = model(torch.cat([prefix[0], q, nxt[i]])[None]).logits[0, -1]
            assert rel_err(out2.logits[i, -1], alone) < 1e-5


def test_backend_resolution_and_errors(caplog):
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="baichuan.model"):
        model = make(0, vocab_size=100, attn_backend="auto")
        model(torch.tensor([[1, 2, 3]]))
        model(torch.tensor([[1, 2, 3]]))
    lines = [r for r in caplog.records if "xformers" in r.getMessage()]
    assert len(lines) == 1 and "sdpa" in lines[0].getMessage()
    assert resolve_attn_backend("eager", cpu) == "eager"
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        resolve_attn_backend("xformers", cpu)
    model = make(0, vocab_size=100, attn_backend="xformers")
    with pytest.raises(RuntimeError, match="xformers.*CUDA"):
        model(torch.tensor([[1, 2, 3]]))


def test_bad_inputs():
    model = make(0, vocab_size=100)
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="input_ids must be"):
        model(torch.tensor([1, 2, 3]))


def test_native_checkpoint_roundtrip_and_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    from baichuan.checkpoint import CheckpointError, load_model, save_model

    model = make(8, vocab_size=200)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    bf = load_model(tmp_path / "m", dtype=torch.bfloat16)
    assert bf.lm_head.weight.dtype == torch.bfloat16

    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(10, 64)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(10, 64\).*\(176, 64\)"):
        load_model(tmp_path / "m")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys.*up_proj"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope")


def test_tied_embeddings_save_load(tmp_path):
    from baichuan.checkpoint import load_model, save_model

    model = make(9, vocab_size=200, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    save_model(model, tmp_path / "t")
    loaded = load_model(tmp_path / "t")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


ZERO3_INIT = """
import os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29471", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
from baichuan.config import ModelConfig
from baichuan.model import BaichuanForCausalLM
deepspeed.init_distributed("gloo")
cfg = ModelConfig.preset("tiny", vocab_size=300)
torch.manual_seed(0)
plain = BaichuanForCausalLM(cfg)
torch.manual_seed(0)
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
with deepspeed.zero.Init(config_dict_or_path=ds):
    model = BaichuanForCausalLM(cfg)
params = list(model.parameters())
assert all(hasattr(p, "ds_id") for p in params)
with deepspeed.zero.GatheredParameters(params):
    for (n, a), b in zip(plain.named_parameters(), model.parameters()):
        assert torch.equal(a, b), n
print("same init")
"""


def test_init_under_zero3_equals_plain_init(tmp_path):
    """Parameters partitioned by deepspeed.zero.Init get the same initialisation as without it."""
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    script = tmp_path / "z3.py"
    script.write_text(ZERO3_INIT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "same init" in proc.stdout, proc.stderr[-3000:]


def test_varying_shape_attention_keeps_sdpa_off_cudnn_on_cuda_only() -> None:
    """Scoring and decoding (a new shape per call) run SDPA without cuDNN on CUDA; measured on an
    H200 in docs/performance.md. The switch itself needs no GPU to check."""
    from baichuan.model import varying_shape_attention

    cuda = torch.backends.cuda
    before = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled())
    with varying_shape_attention(torch.device("cuda")):
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled()
    assert (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled()) == before
    with varying_shape_attention(torch.device("cuda"), allow_cudnn=True):
        assert cuda.cudnn_sdp_enabled() == before[0]
    with varying_shape_attention(torch.device("cpu")):
        assert cuda.cudnn_sdp_enabled() == before[0]
