"""Long context: RoPE scaling (linear, dynamic NTK, yarn) against transformers' LlamaForCausalLM with
the same ``rope_parameters`` (fp32, CPU, past the original window, with a KV cache), the exported
remote-code model, the config keys and errors, `baichuan train --init-from M --rope-scaling yarn:4`
(runs, resumes exactly), and `generate`/`eval` past the original window."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baichuan.checkpoint import save_model
from baichuan.cli import main as cli_main
from baichuan.config import ContextLengthError, ModelConfig, RopeScalingError, parse_rope_scaling
from baichuan.generate import GenerationConfig, generate_ids
from baichuan.model import BaichuanForCausalLM

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

from baichuan.hf import export_hf, llama_model_from  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPM_32K = SHARED / "spm-models" / "llama2.model"
SPM_64K = SHARED / "spm-models" / "baichuan-7b.model"
EVAL_DATA = SHARED / "eval-data"

WINDOW = 32  # the tiny models' pre-training window; the tests run well past it
SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": WINDOW},
    "yarn-options": {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": WINDOW,
                     "beta_fast": 16, "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5, "truncate": False},
    "yarn-attention-factor": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": WINDOW,
                              "attention_factor": 1.3},
}


def make(rope_scaling: dict | None, seed: int = 0, vocab_size: int = 300, **kw) -> BaichuanForCausalLM:
    torch.manual_seed(seed)
    max_pos = WINDOW
    if rope_scaling and rope_scaling["rope_type"] == "yarn":
        max_pos = int(WINDOW * rope_scaling["factor"])  # yarn: the extended window (transformers' convention)
    cfg = ModelConfig.preset("tiny", vocab_size=vocab_size, max_position_embeddings=max_pos,
                             rope_scaling=rope_scaling, **kw)
    model = BaichuanForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ------------------------------------------------------------------------ logits vs transformers
@pytest.mark.parametrize("name", list(SCALINGS))
def test_logits_equal_llama_past_the_window(name: str) -> None:
    model = make(SCALINGS[name])
    ref = llama_model_from(model).eval()
    assert ref.config.rope_parameters["rope_type"] == SCALINGS[name]["rope_type"]
    ids = torch.randint(0, 300, (2, 5 * WINDOW), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).logits, ref(ids).logits
    assert max_diff(ours, theirs) <= 1e-5
    # and the scaling changes the logits (a no-op implementation could not pass the above alone)
    plain = make(None)
    with torch.no_grad():
        assert max_diff(plain(ids).logits[:, -1], ours[:, -1]) > 1e-3


@pytest.mark.parametrize("name", ["linear", "dynamic", "yarn"])
def test_kv_cache_equals_llama_cache(name: str) -> None:
    """Prefill inside the window, then chunks and single tokens past it; each call's logits equal
    transformers' with its own cache (dynamic: both rotate each call for its own length)."""
    model = make(SCALINGS[name])
    ref = llama_model_from(model).eval()
    ids = torch.randint(0, 300, (2, 3 * WINDOW), generator=torch.Generator().manual_seed(2))
    cuts = [0, WINDOW - 8, WINDOW + 5, WINDOW + 6, WINDOW + 7, 2 * WINDOW, 3 * WINDOW]
    past, cache = None, DynamicCache()
    with torch.no_grad():
        for a, b in zip(cuts, cuts[1:]):
            out = model(ids[:, a:b], past_key_values=past, use_cache=True)
            past = out.past_key_values
            r = ref(ids[:, a:b], cache=cache, use_cache=True, position_ids=torch.arange(a, b)[None])
            cache = r.cache if hasattr(r, "cache") else r.past_key_values
            assert max_diff(out.logits, r.logits) <= 1e-5, (a, b)
    if name != "dynamic":  # a static scaling: cached decoding equals one forward over everything
        with torch.no_grad():
            full = model(ids).logits
        assert max_diff(full[:, -WINDOW:], out.logits) <= 1e-5


def test_dynamic_ntk_follows_the_length_of_each_call() -> None:
    """Documented behaviour (baichuan.model): within the window dynamic == plain RoPE; past it the
    frequencies of max(position_ids) + 1; no memory of earlier calls (a fresh transformers model
    per call agrees; a reused one keeps its longest frequencies for a shorter call)."""
    model = make(SCALINGS["dynamic"])
    plain = make(None)
    short = torch.randint(0, 300, (1, WINDOW), generator=torch.Generator().manual_seed(3))
    long_ = torch.randint(0, 300, (1, 4 * WINDOW), generator=torch.Generator().manual_seed(4))
    mid = long_[:, : 2 * WINDOW]
    with torch.no_grad():
        assert torch.equal(model(short).logits, plain(short).logits)
        ref = llama_model_from(model).eval()
        assert max_diff(model(long_).logits, ref(long_).logits) <= 1e-5
        after_long_ours = model(mid).logits
        after_long_reused = ref(mid).logits  # transformers still holds the 4*WINDOW frequencies
        fresh = llama_model_from(model).eval()(mid).logits
    assert max_diff(after_long_ours, fresh) <= 1e-5
    assert max_diff(after_long_ours, after_long_reused) > 1e-4
    # a batch uses the longest row's length (max over all position ids), as transformers does
    batch = torch.cat([long_[:, : 2 * WINDOW], long_[:, WINDOW: 3 * WINDOW]])
    pos = torch.stack([torch.arange(2 * WINDOW), torch.arange(WINDOW, 3 * WINDOW)])
    with torch.no_grad():
        got = model(batch, position_ids=pos).logits
        want = llama_model_from(model).eval()(batch, position_ids=pos).logits
    assert max_diff(got, want) <= 1e-5


def test_training_gradients_flow_with_scaling() -> None:
    model = make(SCALINGS["yarn"]).train()
    ids = torch.randint(0, 300, (2, 2 * WINDOW))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.layers[0].self_attn.W_pack.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ config and errors
def test_config_keys_round_trip_and_transformers_forms(tmp_path: Path) -> None:
    cfg = make(SCALINGS["yarn-options"]).config
    cfg.to_json_file(tmp_path / "config.json")
    assert ModelConfig.from_json_file(tmp_path / "config.json") == cfg
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_scaling"] == SCALINGS["yarn-options"]
    # transformers 5 writes rope_parameters (with rope_theta inside); 4.x wrote rope_scaling with "type"
    llama = llama_model_from(make(SCALINGS["yarn"])).config.to_dict()
    assert "rope_parameters" in llama
    back = ModelConfig.from_dict(llama)
    assert back.rope_scaling == SCALINGS["yarn"] and back.rope_theta == 10000.0
    legacy = ModelConfig.from_dict({"rope_scaling": {"type": "linear", "factor": 2}, "rope_theta": 500.0})
    assert legacy.rope_scaling == {"rope_type": "linear", "factor": 2.0} and legacy.rope_theta == 500.0
    assert ModelConfig.from_dict({"rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}).rope_scaling is None
    # yarn without original_max_position_embeddings: filled from max_position_embeddings (transformers' default)
    assert ModelConfig.preset("tiny", rope_scaling={"rope_type": "yarn", "factor": 2})\
        .rope_scaling["original_max_position_embeddings"] == 512
    # windows: linear/dynamic keep max_position_embeddings as the original window; yarn extends it
    base = ModelConfig.preset("tiny", max_position_embeddings=4096)
    y = base.with_rope_scaling("yarn", 4)
    assert (y.max_position_embeddings, y.original_window, y.context_window) == (16384, 4096, 16384)
    d = base.with_rope_scaling("dynamic", 4)
    assert (d.max_position_embeddings, d.context_window) == (4096, 16384)
    assert y.with_rope_scaling("yarn", 8).rope_scaling["original_max_position_embeddings"] == 4096


@pytest.mark.parametrize(
    "spec, message",
    [
        ("foo:4", "--rope-scaling 'foo:4': unknown RoPE scaling type 'foo' (known: linear, dynamic, yarn)"),
        ("yarn:1", "--rope-scaling 'yarn:1': the scaling factor must be a number > 1, got 1.0"),
        ("linear:0.5", "--rope-scaling 'linear:0.5': the scaling factor must be a number > 1, got 0.5"),
        ("dynamic:-2", "--rope-scaling 'dynamic:-2': the scaling factor must be a number > 1, got -2.0"),
        ("yarn", "--rope-scaling 'yarn': expected TYPE:FACTOR, e.g. yarn:4 (types: linear, dynamic, yarn)"),
        ("yarn:four", "--rope-scaling 'yarn:four': the factor 'four' is not a number"),
    ],
)
def test_bad_flag_one_clear_error(spec: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RopeScalingError) as e:
        parse_rope_scaling(spec)
    assert str(e.value) == message
    rc = cli_main(["train", "--data", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--model", "tiny",
                   "--rope-scaling", spec])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"baichuan train: error: {message}"]


def test_bad_config_values_name_the_file(tmp_path: Path) -> None:
    cases = [
        ({"rope_type": "ntk", "factor": 2}, "unknown RoPE scaling type 'ntk'"),
        ({"rope_type": "yarn", "factor": 1}, "the scaling factor must be a number > 1, got 1"),
        ({"rope_type": "dynamic", "factor": 0.5}, "the scaling factor must be a number > 1, got 0.5"),
        ({"rope_type": "linear"}, "rope_type 'linear' needs a 'factor'"),
        ({"rope_type": "linear", "factor": 2, "beta_fast": 3}, "key(s) beta_fast not supported for rope_type 'linear'"),
        ({"rope_type": "yarn", "factor": 2, "partial_rotary_factor": 0.5},
         "key(s) partial_rotary_factor not supported"),
        ({"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 0}, "must be a positive integer"),
        ("yarn", "must be a dict"),
    ]
    path = tmp_path / "config.json"
    for value, message in cases:
        data = ModelConfig.preset("tiny").to_dict()
        data["rope_scaling"] = value
        path.write_text(json.dumps(data))
        with pytest.raises(RopeScalingError) as e:
            ModelConfig.from_json_file(path)
        assert str(e.value).startswith(f"{path}: ModelConfig.rope_scaling") and message in str(e.value), e.value


# ----------------------------------------------------------------------------------- generation
def test_generate_past_the_window_only_when_scaled() -> None:
    prompt = torch.randint(3, 300, (3 * WINDOW,), generator=torch.Generator().manual_seed(5)).tolist()
    with pytest.raises(ContextLengthError) as e:
        list(generate_ids(make(None), prompt, GenerationConfig(max_new_tokens=8)))
    assert str(e.value).startswith(
        f"the prompt ({3 * WINDOW} tokens) plus max_new_tokens (8) is {3 * WINDOW + 8} tokens, past the "
        f"model's context window of {WINDOW} (max_position_embeddings, no rope_scaling); shorten it or "
        "continue pre-training with `baichuan train --init-from MODEL --rope-scaling yarn:F"
    )
    for name in ("linear", "dynamic", "yarn"):
        model = make(SCALINGS[name])
        cfg = GenerationConfig(max_new_tokens=8, repetition_penalty=1.0, stop_at_eos=False)
        cached = list(generate_ids(model, prompt, cfg))
        assert len(cached) == 8
        if name != "dynamic":  # dynamic: each recomputation rotates the prefix for a new length
            assert cached == list(generate_ids(model, prompt, GenerationConfig(
                max_new_tokens=8, repetition_penalty=1.0, stop_at_eos=False, use_cache=False)))
    with pytest.raises(ContextLengthError, match=r"past the model's context window of 128 \(32 x yarn factor 4\)"):
        list(generate_ids(make(SCALINGS["yarn"]), prompt + prompt, GenerationConfig(max_new_tokens=1)))


@pytest.fixture(scope="module")
def spm_64k() -> Path:
    if not SPM_64K.is_file():
        pytest.skip("../shared is absent")
    return SPM_64K


@pytest.mark.parametrize("name", ["dynamic", "yarn"])
def test_export_hf_applies_the_scaling(name: str, spm_64k: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = make(SCALINGS[name], vocab_size=64000)
    save_model(model, tmp_path / "native")
    out = export_hf(tmp_path / "native", tmp_path / "hf", tokenizer=spm_64k)
    exported = json.loads((out / "config.json").read_text())
    assert exported["rope_scaling"] == SCALINGS[name]
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(3, 64000, (2, 3 * WINDOW), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert max_diff(model(ids).logits, hf(input_ids=ids).logits) <= 1e-5
    prompt = ids[0, : 2 * WINDOW].tolist()  # already past the original window
    ours = list(generate_ids(model, prompt, GenerationConfig(max_new_tokens=10, stop_at_eos=False)))
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10,
                             repetition_penalty=1.1, eos_token_id=None, pad_token_id=0)
    assert theirs[0, len(prompt):].tolist() == ours
    # save_pretrained (transformers 5 writes rope_parameters) loads back with the same logits,
    # into transformers and into our loader
    hf.save_pretrained(tmp_path / "resaved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved", trust_remote_code=True,
                                                 dtype=torch.float32).eval()
    from baichuan.hf import load_pretrained

    ours_again = load_pretrained(tmp_path / "resaved").eval()
    assert ours_again.config.rope_scaling == SCALINGS[name]
    with torch.no_grad():
        assert max_diff(again(input_ids=ids).logits, hf(input_ids=ids).logits) <= 1e-5
        assert max_diff(ours_again(ids).logits, model(ids).logits) <= 1e-5


def test_cli_generate_long_prompt(spm_64k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = "长上下文测试，" * 15  # ~76 tokens: past 32, within yarn x4 = 128
    for name, scaling in (("plain", None), ("yarn", SCALINGS["yarn"])):
        save_model(make(scaling, vocab_size=64000), tmp_path / name)
        shutil.copyfile(spm_64k, tmp_path / name / "tokenizer.model")
    rc = cli_main(["generate", "--model", str(tmp_path / "plain"), "--max-new-tokens", "4", "--device", "cpu", prompt])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("baichuan generate: error: the prompt (")
    assert f"past the model's context window of {WINDOW} (max_position_embeddings, no rope_scaling)" in err[0]
    rc = cli_main(["generate", "--model", str(tmp_path / "yarn"), "--max-new-tokens", "4", "--device", "cpu",
                   "--no-stream", prompt])
    assert rc == 0 and capsys.readouterr().out.strip()


# ----------------------------------------------------------------------------------------- eval
@pytest.mark.skipif(not (EVAL_DATA.is_dir() and SPM_64K.is_file()), reason="../shared is absent")
def test_eval_prompts_past_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from baichuan.evaluation.runner import EvalConfig, evaluate

    tok = __import__("baichuan").Tokenizer.from_file(SPM_64K)
    args = dict(task="ceval", data_dir=str(EVAL_DATA), split="val", subjects=["logic"], limit=3,
                max_length=200, progress=False)
    with pytest.raises(ContextLengthError, match=r"the longest ceval prompt \(--max-length 200\) is \d+ tokens, "
                                                 r"past the model's context window of 32"):
        evaluate(EvalConfig(**args), make(None, vocab_size=64000), tok)
    for name in ("yarn", "dynamic"):
        model = make({**SCALINGS[name], "factor": 8.0}, vocab_size=64000)
        cached = evaluate(EvalConfig(**args), model, tok)
        full = evaluate(EvalConfig(**args, prefix_cache=False), model, tok)
        assert max(len(it.ids) for it in cached.subjects[0].items) > WINDOW
        # dynamic: the prefix cache is turned off past the window (a cached prefix differs by ~2e-4 here)
        assert abs(cached.subjects[0].logits - full.subjects[0].logits).max() < 1e-5, name
    # the command line: one line, exit 1 as for other eval input errors
    save_model(make(None, vocab_size=64000), tmp_path / "plain")
    shutil.copyfile(SPM_64K, tmp_path / "plain" / "tokenizer.model")
    rc = cli_main(["eval", "--task", "ceval", "--data-dir", str(EVAL_DATA), "--model", str(tmp_path / "plain"),
                   "--subjects", "logic", "--limit", "2", "--max-length", "200", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and any("past the model's context window of 32" in line for line in err)


# ------------------------------------------------------------------------------------- training
@pytest.mark.skipif(not SPM_32K.is_file(), reason="../shared is absent")
def test_train_init_from_with_yarn_runs_and_resumes_exactly(tmp_path: Path) -> None:
    """`baichuan train --init-from M --max-length 128 --rope-scaling yarn:4` from a 32-token model:
    the run's model config is scaled, the weights load, and a run killed after its checkpoint and
    resumed logs the same loss at every step."""
    from test_data import make_text_dir, tokenize_with_cli
    from test_train_deepspeed import kill_after_checkpoint, metrics

    shards = tokenize_with_cli(make_text_dir(tmp_path / "text", n_files=2, lines=120), tmp_path / "shards")
    init = tmp_path / "init"
    start = make(None, vocab_size=32000)
    with torch.no_grad():
        start.lm_head.weight.mul_(50)  # confident, wrong logits: a loss far above a fresh model's ln(32000)
    save_model(start, init)
    shutil.copyfile(SPM_32K, init / "tokenizer.model")

    def args(out: Path) -> list[str]:
        return [sys.executable, "-m", "baichuan", "train", "--data", str(shards), "--init-from", str(init),
                "--output-dir", str(out), "--max-length", str(4 * WINDOW), "--rope-scaling", "yarn:4",
                "--micro-batch-size", "2", "--steps", "6", "--save-every", "3", "--keep-last", "2",
                "--lr", "1e-3", "--warmup-steps", "1", "--precision", "fp32", "--seed", "5", "--log-every", "1",
                "--no-progress", "--no-tensorboard", "--no-plot"]

    ref = tmp_path / "ref"
    r = subprocess.run(args(ref), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((ref / "checkpoints" / "step-6" / "model" / "config.json").read_text())
    assert saved["rope_scaling"] == SCALINGS["yarn"] and saved["max_position_embeddings"] == 4 * WINDOW
    m = metrics(ref)
    assert sorted(m) == list(range(1, 7)) and m[1]["loss"] > 15.0  # the init weights, not ln(32000) = 10.4

    out = tmp_path / "resumed"
    out.mkdir()
    kill_after_checkpoint(args(out), out, 3)
    r = subprocess.run([*args(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = metrics(out)
    assert [got[s]["loss"] for s in range(1, 7)] == [m[s]["loss"] for s in range(1, 7)]

    r = subprocess.run([*args(tmp_path / "too-long"), "--max-length", str(8 * WINDOW)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"baichuan train: error: --max-length is {8 * WINDOW} tokens, past the model's context window of "
        f"{4 * WINDOW} ({WINDOW} x yarn factor 4); shorten it or use a larger scaling factor")
