"""An exported folder works where only transformers + sentencepiece are installed (the Hub case),
runs upstream Baichuan-7B's README snippet verbatim, and nothing tells users to `pip install` the
unrelated PyPI project named `baichuan`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch

from baichuan.checkpoint import save_model
from baichuan.cli import main as cli_main
from baichuan.generate import GenerationConfig, generate_ids
from baichuan.hf import export_hf, load_checkpoint
from baichuan.model import BaichuanForCausalLM

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tiny_model  # noqa: E402
from tokenizer_corpus import EVAL_DIR, SHARED, eval_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "baichuan-stack"
SPM = SHARED / "spm-models" / "baichuan-7b.model"
# upstream Baichuan-7B README's inference example, prompt and settings
SEED_PROMPT = "登鹳雀楼->王之涣\n夜雨寄北->"
TEXTS = ["你好，世界", "Hello world, this is Baichuan.", "  leading spaces\tand tabs\n新行", "数学题：1+1=2",
         "emoji 😀 and \u00a0nbsp", "A"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def spm_path() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SPM


@pytest.fixture(scope="module")
def exported(tmp_path_factory, spm_path) -> tuple[BaichuanForCausalLM, Path, Path]:
    """(model, native folder, export folder): a tiny vocab-64000 model exported with small shards."""
    root = tmp_path_factory.mktemp("portable")
    model = tiny_model(seed=11)
    save_model(model, root / "native")
    out = export_hf(root / "native", root / "hf", tokenizer=spm_path, max_shard_size="3MB")
    return model, root / "native", out


@pytest.fixture(scope="module")
def eval_sample() -> list[str]:
    """Every 25th text field of the evaluation data (about 13k texts, zh and en)."""
    if not EVAL_DIR.is_dir():
        pytest.skip("../shared/eval-data is absent")
    return eval_texts()[::25]


# ------------------------------------------------------------------------------ the package name
_BARE_INSTALL = re.compile(r"pip install\s+(?:-\S+\s+)*[\"'`]?baichuan(?![-\w])")
_BARE_EXTRA = re.compile(r"[\"'`]baichuan\[")


def _project_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", *sorted((ROOT / ".ci").glob("*"))]
    for folder in ("python", "scripts", "evaluation", "docs", "config"):
        files += [p for p in sorted((ROOT / folder).rglob("*"))
                  if p.is_file() and p.suffix in (".py", ".md", ".sh", ".toml", ".yaml", ".json", ".txt", "")]
    return [p for p in files if p.is_file()]


def test_no_message_tells_users_to_install_bare_baichuan() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["name"] == DISTRIBUTION
    offenders = []
    for path in _project_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for pattern in (_BARE_INSTALL, _BARE_EXTRA):
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not offenders, offenders
    # the hints that name an install do name this distribution
    remote = (ROOT / "python/baichuan/hf_remote/tokenization_baichuan.py").read_text(encoding="utf-8")
    assert f"pip install {DISTRIBUTION}" in remote
    for path in ("python/baichuan/model.py", "python/baichuan/tokenizer_training.py"):
        assert f"pip install '{DISTRIBUTION}[" in (ROOT / path).read_text(encoding="utf-8")


# ------------------------------------------------------------- without the `baichuan` package
HIDDEN_SCRIPT = textwrap.dedent("""
    import json, sys
    for name in sys.argv[3].split(","):
        sys.modules[name] = None  # `import name` now raises ImportError, as if not installed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, texts = sys.argv[1], json.loads(open(sys.argv[2], encoding="utf-8").read())
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    except ImportError as e:
        print(json.dumps({"error": str(e)}))
        raise SystemExit(0)
    assert "baichuan" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", trust_remote_code=True)
    inputs = tokenizer('登鹳雀楼->王之涣\\n夜雨寄北->', return_tensors='pt')
    pred = model.generate(**inputs, max_new_tokens=64, repetition_penalty=1.1)
    text = tokenizer.decode(pred.cpu()[0], skip_special_tokens=True)
    print(json.dumps({"backend": tokenizer.backend_name, "ids": tokenizer(texts)["input_ids"],
                      "decoded": [tokenizer.decode(i) for i in tokenizer(texts)["input_ids"]],
                      "pred": pred[0].tolist(), "text": text}))
""")


def _run_hidden(folder: Path, texts: list[str], hidden: str, tmp_path: Path) -> dict:
    script = tmp_path / "hidden.py"
    script.write_text(HIDDEN_SCRIPT, encoding="utf-8")
    data = tmp_path / "texts.json"
    data.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(script), str(folder), str(data), hidden],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ref_one(spm_path: Path, text: str) -> list[int]:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_path)).encode(text)


def _rust_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert tok.backend_name == "baichuan"
    return tok


def test_export_without_baichuan_package_same_ids_and_snippet(exported, eval_sample, spm_path, tmp_path):
    """Hub case: `baichuan` not importable -> the sentencepiece backend, ids identical to the
    Rust backend's (and to sentencepiece's), and upstream's snippet generates the same tokens."""
    import sentencepiece as spm

    model, _, out = exported
    texts = TEXTS + eval_sample[:3000]
    hidden = _run_hidden(out, texts, "baichuan", tmp_path)
    assert hidden["backend"] == "sentencepiece"
    tok = _rust_tokenizer(out)
    ours = tok(texts)["input_ids"]
    assert hidden["ids"] == ours == spm.SentencePieceProcessor(model_file=str(spm_path)).encode(texts)
    assert hidden["decoded"] == [tok.decode(i) for i in ours]
    prompt = tok(SEED_PROMPT)["input_ids"]
    expected = list(generate_ids(model, prompt, GenerationConfig(), eos_id=2))
    assert hidden["pred"] == prompt + expected
    assert hidden["text"] == tok.decode(prompt + expected, skip_special_tokens=True)


def test_unknown_tokenizer_backend_is_refused(exported):
    from transformers import AutoTokenizer

    _, _, out = exported
    with pytest.raises(ValueError, match=r"tokenizer_backend must be one of auto, baichuan, sentencepiece, got 'spm'"):
        AutoTokenizer.from_pretrained(out, trust_remote_code=True, tokenizer_backend="spm")


def test_no_tokenizer_backend_at_all_names_both_installs(exported, tmp_path):
    _, _, out = exported
    result = _run_hidden(out, ["x"], "baichuan,sentencepiece", tmp_path)
    assert "pip install sentencepiece" in result["error"]
    assert f"pip install {DISTRIBUTION}" in result["error"]


def test_seed_snippet_verbatim_equals_baichuan_generate(exported, capsys):
    """Upstream's README example (CPU: no .to('cuda')) on the export gives the ids and text of
    `baichuan generate` (greedy, repetition penalty 1.1, 64 new tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, _, out = exported
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    inputs = tokenizer(SEED_PROMPT, return_tensors="pt")
    pred = hf.generate(**inputs, max_new_tokens=64, repetition_penalty=1.1)
    text = tokenizer.decode(pred.cpu()[0], skip_special_tokens=True)

    prompt = inputs["input_ids"][0].tolist()
    expected = list(generate_ids(model, prompt, GenerationConfig(), eos_id=2))
    assert pred[0, len(prompt):].tolist() == expected
    assert text == tokenizer.decode(prompt + expected, skip_special_tokens=True)
    # `baichuan generate` on the same folder prints the same continuation
    capsys.readouterr()
    assert cli_main(["generate", "--model", str(out), "--device", "cpu", "--no-stream", SEED_PROMPT]) == 0
    printed = capsys.readouterr().out
    assert printed == tokenizer.decode(expected) + "\n"


def test_seed_snippet_bfloat16_device_map_auto(exported):
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, _, out = exported
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    hf = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.bfloat16, device_map="auto",
                                              trust_remote_code=True)
    assert hf.dtype == torch.bfloat16 and hf.device.type in ("cpu", "cuda")
    inputs = tokenizer(SEED_PROMPT, return_tensors="pt").to(hf.device)
    pred = hf.generate(**inputs, max_new_tokens=64, repetition_penalty=1.1)
    text = tokenizer.decode(pred.cpu()[0], skip_special_tokens=True)
    prompt = inputs["input_ids"][0].tolist()
    # bf16 weights in our own model give the same greedy tokens
    ref = BaichuanForCausalLM(model.config).eval()
    ref.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    ref = ref.to(torch.bfloat16)
    expected = list(generate_ids(ref, prompt, GenerationConfig(), eos_id=2))
    assert pred[0, len(prompt):].tolist() == expected
    assert text.startswith("登鹳雀楼->王之涣")


def test_hf_batch_call_equals_sentencepiece_on_eval_sample(exported, eval_sample, spm_path):
    """`tokenizer(list_of_texts)` through the HF API == sentencepiece, text by text (Rust backend,
    and the sentencepiece backend in the same process)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    _, _, out = exported
    ref = spm.SentencePieceProcessor(model_file=str(spm_path)).encode(eval_sample)
    rust = _rust_tokenizer(out)
    assert rust(eval_sample)["input_ids"] == ref
    sp = AutoTokenizer.from_pretrained(out, trust_remote_code=True, tokenizer_backend="sentencepiece")
    assert sp.backend_name == "sentencepiece"
    assert sp(eval_sample[:2000])["input_ids"] == ref[:2000]
    # one at a time, padded tensors and pairs take the same ids
    assert [rust(t)["input_ids"] for t in eval_sample[:200]] == ref[:200]
    batch = rust(eval_sample[:4], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, : len(ref[0])].tolist() == ref[0]
    assert rust("你好", "世界")["input_ids"] == rust("你好")["input_ids"] + rust("世界")["input_ids"]
    # added tokens inside a text are split out as transformers does (not left to the backend)
    assert rust(["a</s>b"])["input_ids"][0] == rust("a")["input_ids"] + [2] + rust("b")["input_ids"]
    assert rust(["a</s>b"], split_special_tokens=True)["input_ids"] == [ref_one(spm_path, "a</s>b")]
    bos = AutoTokenizer.from_pretrained(out, trust_remote_code=True, add_bos_token=True)
    assert bos(eval_sample[:50])["input_ids"] == [[1] + r for r in ref[:50]]
    assert bos(eval_sample[:50], add_special_tokens=False)["input_ids"] == ref[:50]


@pytest.mark.parametrize("options", [
    {}, {"padding": True, "return_tensors": "pt"}, {"padding": "max_length", "max_length": 40, "pad_to_multiple_of": 8},
    {"return_attention_mask": False}, {"padding": True, "padding_side": "left"}, {"truncation": True, "max_length": 5},
    {"return_length": True}, {"return_special_tokens_mask": True},
])
def test_hf_batch_options_equal_transformers_sentencepiece_tokenizer(exported, eval_sample, spm_path, options):
    """The one-call batch path returns what transformers' own sentencepiece tokenizer returns
    (padding, sides, masks, tensors, truncation), empty and blank texts included. (Texts holding
    "</s>" differ on purpose: ours splits added tokens out as upstream's tokenizer did.)"""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    _, _, out = exported
    reference = SentencePieceBackend(vocab_file=str(spm_path), pad_token="<unk>")
    texts = eval_sample[:7] + ["", "  ", "a b"]
    ours = _rust_tokenizer(out)(texts, **options)
    theirs = reference(texts, add_special_tokens=False, **options)
    assert ours.keys() == theirs.keys()
    for key in ours:
        a, b = ours[key], theirs[key]
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), key


def test_sharded_export_from_the_command_line(exported, tmp_path, capsys):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model, native, _ = exported
    out = tmp_path / "hf"
    for bad in ("2 parsecs", "0MB"):
        assert cli_main(["export-hf", "--checkpoint", str(native), "--output", str(out), "--tokenizer", str(SPM),
                         "--max-shard-size", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("baichuan export-hf: error: --max-shard-size:"), err
        assert repr(bad) in err[0] and not out.exists()
    assert cli_main(["export-hf", "--checkpoint", str(native), "--output", str(out), "--tokenizer", str(SPM),
                     "--max-shard-size", "2MB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == sorted(p.name for p in out.glob("model-*.safetensors"))
    total = 0
    for name in shards:
        with safe_open(str(out / name), framework="pt") as f:
            sizes = [f.get_tensor(k).numel() * 4 for k in f.keys()]
        total += sum(sizes)
        assert sum(sizes) <= 2_000_000 or len(sizes) == 1  # one tensor over the limit gets its own shard
    assert total == index["metadata"]["total_size"]
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)
    assert load_checkpoint(out)[0] == model.config


def test_folder_missing_tokenizer_model_one_clear_error(exported, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    _, _, out = exported
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(out, broken)
    (broken / "tokenizer.model").unlink()
    with pytest.raises(ValueError, match=r"tokenizer\.model not found in .*no-tokenizer.*export-hf --tokenizer"):
        AutoTokenizer.from_pretrained(broken, trust_remote_code=True)
