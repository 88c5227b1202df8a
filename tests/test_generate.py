"""Generation: cached == uncached, sampling filters vs transformers' processors, EOS, streaming, CLI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from baichuan.checkpoint import save_model
from baichuan.config import ModelConfig
from baichuan.generate import (
    GenerationConfig,
    TextStream,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    generate,
    generate_ids,
)
from baichuan.model import BaichuanForCausalLM

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPM = SHARED / "spm-models" / "baichuan-7b.model"


@pytest.fixture(scope="module")
def tok():
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    from baichuan import Tokenizer

    return Tokenizer.from_file(SPM)


def tiny(seed: int = 0, **kw) -> BaichuanForCausalLM:
    torch.manual_seed(seed)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", **kw)).eval()
    with torch.no_grad():  # larger logits so sampling is not uniform
        model.lm_head.weight.mul_(20)
    return model


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "cfg",
    [
        GenerationConfig(max_new_tokens=20),
        GenerationConfig(max_new_tokens=20, repetition_penalty=1.0),
        GenerationConfig(max_new_tokens=20, temperature=0.8, top_k=50, top_p=0.9, seed=3),
    ],
)
def test_cached_generation_equals_full_recomputation(cfg, backend):
    model = tiny(1, vocab_size=500, attn_backend=backend)
    prompt = [5, 17, 42, 99, 7]
    cached = list(generate_ids(model, prompt, cfg, eos_id=None))
    cfg.use_cache = False
    uncached = list(generate_ids(model, prompt, cfg, eos_id=None))
    assert len(cached) == 20 and cached == uncached


def test_sampling_is_seeded_and_filters_work():
    model = tiny(2, vocab_size=500)
    prompt = [1, 2, 3]
    a = list(generate_ids(model, prompt, GenerationConfig(temperature=1.0, seed=1), eos_id=None))
    b = list(generate_ids(model, prompt, GenerationConfig(temperature=1.0, seed=1), eos_id=None))
    c = list(generate_ids(model, prompt, GenerationConfig(temperature=1.0, seed=2), eos_id=None))
    assert a == b and a != c
    greedy = list(generate_ids(model, prompt, GenerationConfig(), eos_id=None))
    top1 = GenerationConfig(temperature=1.0, top_k=1, seed=5)
    assert list(generate_ids(model, prompt, top1, eos_id=None)) == greedy
    nucleus = GenerationConfig(temperature=1.0, top_p=1e-6, seed=5)
    assert list(generate_ids(model, prompt, nucleus, eos_id=None)) == greedy


def test_logit_processing_matches_transformers():
    pytest.importorskip("transformers")
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 200, generator=g) * 3
    seen = torch.randint(0, 200, (3, 30), generator=g)
    assert torch.equal(
        apply_repetition_penalty(scores, seen, 1.1), RepetitionPenaltyLogitsProcessor(1.1)(seen, scores.clone())
    )
    t = TemperatureLogitsWarper(0.7)(seen, scores.clone())
    assert torch.equal(filter_top_k(t, 17), TopKLogitsWarper(17)(seen, t.clone()))
    for p in (0.1, 0.5, 0.95):
        assert torch.equal(filter_top_p(t, p), TopPLogitsWarper(p)(seen, t.clone()))


def test_stops_at_eos():
    model = tiny(3, vocab_size=500)
    prompt = [9, 8, 7]
    free = list(generate_ids(model, prompt, GenerationConfig(max_new_tokens=30, repetition_penalty=1.0), eos_id=None))
    # pick a token that first appears at position k > 0 and call it EOS: output must stop before it
    k = next(i for i, t in enumerate(free) if i > 0 and t not in free[:i])
    stopped = list(generate_ids(model, prompt, GenerationConfig(max_new_tokens=30, repetition_penalty=1.0),
                                eos_id=free[k]))
    assert stopped == free[:k]


def test_generate_text_streams_what_it_returns(tok):
    model = tiny(4)
    out = io.StringIO()
    text = generate(model, tok, "登鹳雀楼->王之涣\n夜雨寄北->", GenerationConfig(max_new_tokens=30), stream=out)
    assert out.getvalue() == text and len(text) > 0
    prompt_ids = tok.encode("登鹳雀楼->王之涣\n夜雨寄北->")
    ids = list(generate_ids(model, prompt_ids, GenerationConfig(max_new_tokens=30), eos_id=tok.eos_id))
    full = tok.decode(prompt_ids + ids)
    assert full == tok.decode(prompt_ids) + text


def test_stream_holds_back_partial_utf8(tok):
    ids = tok.encode("猫\U0002A6D6")
    pieces = [tok.id_to_piece(i) for i in ids]
    assert any(p.startswith("<0x") for p in pieces)  # byte fallback really happens here
    chunks: list[str] = []
    ts = TextStream(tok, [], chunks.append)
    for i in ids:
        ts.put(i)
    assert ts.end() == "猫\U0002A6D6" and "".join(chunks) == "猫\U0002A6D6"
    assert all("\ufffd" not in c for c in chunks)


def test_vocab_mismatch_and_bad_config(tok):
    with pytest.raises(ValueError, match=r"vocabulary mismatch.*64000.*500"):
        generate(tiny(0, vocab_size=500), tok, "hi")
    model = tiny(0, vocab_size=500)
    with pytest.raises(ValueError, match="outside the model vocabulary"):
        list(generate_ids(model, [1, 600], GenerationConfig()))
    with pytest.raises(ValueError, match="top_p"):
        list(generate_ids(model, [1], GenerationConfig(top_p=0.0)))
    with pytest.raises(ValueError, match="empty"):
        list(generate_ids(model, [], GenerationConfig()))


def test_cli_generate_and_export(tmp_path, tok, capsys):
    from baichuan.cli import main

    model = tiny(5)
    save_model(model, tmp_path / "m")
    prompt = "今天天气"
    assert main(["generate", "--model", str(tmp_path / "m"), "--tokenizer", str(SPM),
                 "--max-new-tokens", "12", prompt]) == 0
    printed = capsys.readouterr().out
    assert printed == generate(model, tok, prompt, GenerationConfig(max_new_tokens=12)) + "\n"
    # export, then generate from the exported folder (tokenizer.model found inside it)
    assert main(["export-hf", "--checkpoint", str(tmp_path / "m"), "--output", str(tmp_path / "hf"),
                 "--tokenizer", str(SPM)]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "hf"), "--max-new-tokens", "12", "--no-stream",
                 prompt]) == 0
    assert capsys.readouterr().out == printed
    # errors are one clear line and exit status 2
    assert main(["generate", "--model", str(tmp_path / "m"), prompt]) == 2
    assert "tokenizer model not found" in capsys.readouterr().err
    save_model(tiny(6, vocab_size=500), tmp_path / "small")
    assert main(["generate", "--model", str(tmp_path / "small"), "--tokenizer", str(SPM), prompt]) == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
    assert main(["export-hf", "--checkpoint", str(tmp_path / "small"), "--output", str(tmp_path / "x"),
                 "--tokenizer", str(SPM)]) == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
