"""transformers interop: export -> AutoModelForCausalLM/AutoTokenizer, official-layout import,
DeepSpeed checkpoint conversion, and the errors users hit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from baichuan.checkpoint import CheckpointError, save_model
from baichuan.config import ModelConfig
from baichuan.generate import GenerationConfig, generate_ids
from baichuan.hf import export_hf, load_checkpoint, load_pretrained
from baichuan.model import BaichuanForCausalLM

transformers = pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPM = SHARED / "spm-models" / "baichuan-7b.model"
TEXTS = ["你好，世界", "Hello world, this is Baichuan.", "  leading spaces\tand tabs\n新行", "数学题：1+1=2"]


@pytest.fixture(scope="module")
def spm_path() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SPM


def tiny(seed: int = 0, **kw) -> BaichuanForCausalLM:
    torch.manual_seed(seed)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, spm_path):
    """A tiny vocab-64000 model saved natively, then exported with small shards."""
    root = tmp_path_factory.mktemp("export")
    model = tiny(1)
    save_model(model, root / "native")
    out = export_hf(root / "native", root / "hf", tokenizer=spm_path, max_shard_size="3MB")
    return model, out


def test_export_layout(exported):
    _, out = exported
    names = sorted(p.name for p in out.iterdir())
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 1 and all(n.startswith("model-") for n in shards)
    for n in ("config.json", "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json",
              "configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py",
              "generation_config.json", "special_tokens_map.json"):
        assert n in names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_baichuan.BaiChuanForCausalLM"
    assert cfg["architectures"] == ["BaiChuanForCausalLM"] and cfg["vocab_size"] == 64000
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert "model.layers.0.self_attn.W_pack.weight" in index["weight_map"]


def test_transformers_loads_export_same_logits_and_tokens(exported):
    from transformers import AutoModelForCausalLM

    model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == "BaiChuanForCausalLM"
    ids = torch.randint(3, 64000, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    labels = ids.clone()
    with torch.no_grad():
        a = model(ids, attention_mask=mask, labels=labels)
        b = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)
    assert torch.allclose(a.loss, b.loss, rtol=1e-6)

    prompt = ids[0, :6].tolist()
    ours = list(generate_ids(model, prompt, GenerationConfig(max_new_tokens=24), eos_id=2))
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24,
                             repetition_penalty=1.1, eos_token_id=2, pad_token_id=0)
    assert len(ours) == 24
    assert theirs[0, len(prompt):].tolist() == ours
    # and generation_config.json carries the upstream defaults (greedy, penalty 1.1, 64 tokens)
    with torch.no_grad():
        default = hf.generate(torch.tensor([prompt]))
    assert default[0, len(prompt):].tolist() == list(generate_ids(model, prompt, GenerationConfig(), eos_id=2))


def test_transformers_tokenizer_wraps_ours(exported, spm_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from baichuan import Tokenizer

    _, out = exported
    hf_tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    ref = spm.SentencePieceProcessor(model_file=str(spm_path))
    ours = Tokenizer.from_file(spm_path)
    assert type(hf_tok).__name__ == "BaiChuanTokenizer"
    assert hf_tok.vocab_size == 64000 and hf_tok.eos_token_id == 2 and hf_tok.bos_token_id == 1
    for text in TEXTS:
        ids = hf_tok(text)["input_ids"]
        assert ids == ref.encode(text) == ours.encode(text)
        assert hf_tok.decode(ids) == ref.decode(ids)
    batch = hf_tok(TEXTS[:2], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2


def test_transformers_batched_generate_and_save_pretrained(exported, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    tok.padding_side = "left"
    texts = ["今天天气很好，我们去", "Hello"]
    with torch.no_grad():
        batched = hf.generate(**tok(texts, return_tensors="pt", padding=True), max_new_tokens=8, do_sample=False)
    for i, text in enumerate(texts):
        ours = list(generate_ids(model, tok(text)["input_ids"], GenerationConfig(max_new_tokens=8), eos_id=2))
        assert batched[i, -8:].tolist() == ours
    hf.save_pretrained(tmp_path / "resaved")
    tok.save_pretrained(tmp_path / "resaved")
    again = load_pretrained(tmp_path / "resaved")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "resaved", trust_remote_code=True)
    assert tok2(texts[0])["input_ids"] == tok(texts[0])["input_ids"]


def test_transformers_activation_checkpointing(exported):
    from transformers import AutoModelForCausalLM

    _, out = exported
    ids = torch.randint(3, 64000, (2, 12), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
        if checkpointing:
            enable = getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable
            enable()
            assert hf.model.gradient_checkpointing
        hf.train()
        hf(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append(hf.model.layers[0].self_attn.W_pack.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_tied_embeddings_export(tmp_path, spm_path):
    from transformers import AutoModelForCausalLM

    model = tiny(7, tie_word_embeddings=True)
    save_model(model, tmp_path / "tied")
    out = export_hf(tmp_path / "tied", tmp_path / "hf", tokenizer=spm_path)
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)


def test_reimport_export_and_export_again(exported, tmp_path, spm_path):
    model, out = exported
    again = load_pretrained(out)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    out2 = export_hf(out, tmp_path / "again", tokenizer=spm_path, dtype="bfloat16")
    cfg, state = load_checkpoint(out2)
    assert state["lm_head.weight"].dtype == torch.bfloat16 and cfg == model.config


def write_official_layout(model: BaichuanForCausalLM, folder: Path, dtype=torch.float16) -> None:
    """What the baichuan-inc/baichuan-7B release looks like: config.json with the upstream keys,
    two pytorch_model-0000K-of-00002.bin shards (with rotary inv_freq buffers) and their index."""
    folder.mkdir()
    c = model.config
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["BaiChuanForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_baichuan.BaiChuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"},
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
        "hidden_size": c.hidden_size, "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings, "model_type": "baichuan",
        "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
        "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.29.1", "use_cache": True, "vocab_size": c.vocab_size,
    }))
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    head = c.hidden_size // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / (
            10000 ** (torch.arange(0, head, 2).float() / head))
    keys = sorted(state)
    parts = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for n, part in enumerate(parts, start=1):
        name = f"pytorch_model-{n:05d}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def test_official_layout_import(tmp_path, spm_path):
    model = tiny(2)
    write_official_layout(model, tmp_path / "baichuan-7B")
    loaded = load_pretrained(tmp_path / "baichuan-7B", dtype=torch.float32)
    assert loaded.config.hidden_size == 64 and loaded.config.vocab_size == 64000
    ids = torch.tensor([[10, 20, 30, 40]])
    with torch.no_grad():
        half = BaichuanForCausalLM(model.config)
        half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        assert torch.allclose(loaded(ids).logits, half(ids).logits, rtol=1e-5, atol=1e-6)
    # and it exports straight to the safetensors layout
    out = export_hf(tmp_path / "baichuan-7B", tmp_path / "hf", tokenizer=spm_path)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"


def test_single_file_bin_and_pickle_refused(tmp_path):
    model = tiny(3, vocab_size=100)
    d = tmp_path / "single"
    d.mkdir()
    model.config.to_json_file(d / "config.json")
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    assert torch.equal(load_pretrained(d).lm_head.weight, model.lm_head.weight)
    # a .bin holding arbitrary objects is not unpickled
    torch.save({"model.norm.weight": torch.ones(64), "evil": object()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_pretrained(d)


def test_errors_name_what_differs(tmp_path, spm_path):
    small = tiny(4, vocab_size=1000)
    save_model(small, tmp_path / "v1000")
    with pytest.raises(ValueError, match=r"vocabulary mismatch.*64000.*1000"):
        export_hf(tmp_path / "v1000", tmp_path / "o1", tokenizer=spm_path)
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        export_hf(tmp_path / "v1000", tmp_path / "o2")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        export_hf(tmp_path / "nope", tmp_path / "o3", tokenizer=spm_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model checkpoint"):
        load_checkpoint(tmp_path / "empty")
    # official layout with a wrong shape and a missing shard
    model = tiny(5, vocab_size=100)
    write_official_layout(model, tmp_path / "bad")
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["intermediate_size"] = 200
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight: checkpoint has \(\d+, \d+\).*expects"):
        load_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        load_pretrained(tmp_path / "bad")
    # an index may not point outside its folder
    index = tmp_path / "bad" / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "../escape.bin"}}))
    with pytest.raises(CheckpointError, match="refusing shard name"):
        load_pretrained(tmp_path / "bad")
    # exporting over a non-empty folder needs --overwrite
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    save_model(tiny(6), tmp_path / "ok")
    from baichuan.errors import RefusedError

    with pytest.raises(RefusedError, match="overwrite"):
        export_hf(tmp_path / "ok", tmp_path / "full", tokenizer=spm_path)


DS_SCRIPT = textwrap.dedent("""
    import os, shutil, sys, torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    from baichuan.checkpoint import save_model
    from baichuan.config import ModelConfig
    from baichuan.model import BaichuanForCausalLM
    deepspeed.init_distributed("gloo")
    torch.manual_seed(0)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny"))
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": int(sys.argv[2])},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    ids = torch.randint(0, 64000, (1, 8))
    engine.backward(engine(ids, labels=ids).loss)
    engine.step()
    engine.save_checkpoint(sys.argv[1])
    # the layout `baichuan train` writes: CKPT/latest, CKPT/<tag>/{mp_rank_*, model/}
    native = os.path.join(sys.argv[1], "global_step1", "model")
    if int(sys.argv[2]) < 3:
        save_model(engine.module, native)
    else:
        os.makedirs(native)
        model.config.to_json_file(os.path.join(native, "config.json"))
    shutil.copyfile(sys.argv[4], os.path.join(native, "tokenizer.model"))
""")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_checkpoint_export(tmp_path, spm_path, stage):
    pytest.importorskip("deepspeed")
    ckpt = tmp_path / "ckpt"
    script = tmp_path / "ds.py"
    script.write_text(DS_SCRIPT)
    port = str(29400 + stage)
    proc = subprocess.run([sys.executable, str(script), str(ckpt), str(stage), port, str(spm_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if stage == 3:  # weights only in the (pickled) optimizer shards, no model/model.safetensors: refused
        with pytest.raises(CheckpointError, match=r"ZeRO-3 .*not opened.*global_step1/model"):
            export_hf(ckpt, tmp_path / "hf")
        return
    out = export_hf(ckpt, tmp_path / "hf")  # config and tokenizer found in global_step1/model/
    cfg, state = load_checkpoint(out)
    assert cfg.hidden_size == 64 and state["lm_head.weight"].dtype == torch.float32
    # a tag folder works too, and the result equals the engine's own weights
    cfg2, state2 = load_checkpoint(ckpt / "global_step1")
    assert cfg2 == cfg and all(torch.equal(state[k], state2[k]) for k in state)
    if stage < 3:
        _, native = load_checkpoint(ckpt / "global_step1" / "model")
        assert all(torch.equal(state[k], native[k].float()) for k in native)
    (ckpt / "global_step1" / "model" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="--config"):
        load_checkpoint(ckpt)
    assert load_checkpoint(ckpt, config=out / "config.json")[0] == cfg
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    ours = load_pretrained(out)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-6)
