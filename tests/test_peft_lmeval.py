"""Fine-tuning and evaluation tools take an exported folder as they are: PEFT LoRA (Baichuan2's
fine-tune targets) trains, merges, saves and reloads; lm-evaluation-harness evaluates it offline
on the repo's local task and picks the same answers as `baichuan eval` on the same prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from baichuan.checkpoint import save_model
from baichuan.evaluation.runner import EvalConfig, run
from baichuan.hf import export_hf, load_pretrained
from helpers import tiny_model

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPM = SHARED / "spm-models" / "baichuan-7b.model"
TASKS = ROOT / "evaluation" / "lm_eval_tasks"
TASK = "baichuan_ceval_mini"
TASK_DATA = TASKS / TASK / "data"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny vocab-64000 model with the Baichuan-7B tokenizer, exported."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    root = tmp_path_factory.mktemp("peft")
    model = tiny_model(seed=5)
    save_model(model, root / "native")
    return export_hf(root / "native", root / "hf", tokenizer=SPM)


# ------------------------------------------------------------------------------------- PEFT
def _lora(model, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def test_peft_lora_trains_merges_saves_and_reloads(exported, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exported, trust_remote_code=True)
    base = AutoModelForCausalLM.from_pretrained(exported, trust_remote_code=True, dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    torch.manual_seed(0)
    peft_model = _lora(base, ["W_pack", "o_proj"])  # Baichuan2's fine-tune script's targets
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    layers = base.config.num_hidden_layers
    assert len(trainable) == 2 * 2 * layers and all("lora_" in n for n in trainable)
    assert any(".W_pack.lora_A" in n for n in trainable) and any(".o_proj.lora_B" in n for n in trainable)

    batch = tok(["登鹳雀楼->王之涣", "Hello world, this is Baichuan."], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(5):
        loss = peft_model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses

    merged = peft_model.merge_and_unload().eval()
    state = merged.state_dict()
    assert set(state) == set(before)  # plain Baichuan keys again, no lora_ leftovers
    assert not torch.equal(state["model.layers.0.self_attn.W_pack.weight"],
                           before["model.layers.0.self_attn.W_pack.weight"])
    assert torch.equal(state["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    out = tmp_path / "merged"
    merged.save_pretrained(out)
    tok.save_pretrained(out)

    again = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ours = load_pretrained(out)  # and our own loader reads what transformers wrote
    with torch.no_grad():
        want = merged(**batch).logits
        assert torch.allclose(again(**batch).logits, want, rtol=1e-5, atol=1e-6)
        assert torch.allclose(ours(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, want,
                              rtol=1e-5, atol=1e-5)
    tok2 = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tok2("登鹳雀楼")["input_ids"] == tok("登鹳雀楼")["input_ids"]


def test_peft_lora_unknown_target_is_one_error_naming_it(exported):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(exported, trust_remote_code=True, dtype=torch.float32)
    # LLaMA's names do not exist here: Baichuan fuses q/k/v into W_pack
    with pytest.raises(ValueError, match=r"Target modules \{'q_proj'\} not found in the base model"):
        _lora(base, ["q_proj"])


# ------------------------------------------------------------------------------- lm-eval
def _lm_eval(model_dir: Path, out: Path) -> list[dict]:
    """The documented recipe (evaluation/lm_eval_tasks/README.md), offline, from another directory."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(out / "modules"))
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},trust_remote_code=True,dtype=float32",
           "--include_path", str(TASKS), "--tasks", TASK, "--device", "cpu", "--batch_size", "8",
           "--output_path", str(out / "results"), "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    samples = sorted((out / "results").rglob(f"samples_{TASK}_*.jsonl"))
    assert len(samples) == 1, list((out / "results").rglob("*"))
    with samples[0].open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def test_lm_eval_offline_local_task_agrees_with_baichuan_eval(exported, tmp_path):
    pytest.importorskip("lm_eval")
    rows = _lm_eval(exported, tmp_path)
    result = run(EvalConfig(task="ceval", data_dir=str(TASK_DATA), model=str(exported), shot=0, split="val",
                            device="cpu", dtype="float32", progress=False))
    (subject,) = result.subjects
    assert len(rows) == len(subject.items) == 16
    for row, item, logits in zip(rows, subject.items, subject.logits):
        contexts = {arg["arg_0"] for arg in row["arguments"].values()}
        assert contexts == {item.text}  # the same prompt, byte for byte
        assert [arg["arg_1"] for arg in row["arguments"].values()] == [" A", " B", " C", " D"]
        ll = np.array([float(r[0]) for r in row["filtered_resps"]])
        # log-softmax at one position: choice differences are raw-logit differences
        np.testing.assert_allclose(ll - ll[0], logits - logits[0], atol=1e-4)
        assert int(ll.argmax()) == int(logits.argmax())
        assert "ABCD"[int(ll.argmax())] == subject.preds[subject.items.index(item)]
        assert int(row["target"]) == "ABCD".index(item.question.answer)
    accuracy = sum(r["acc"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(subject.accuracy)
