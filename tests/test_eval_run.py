"""Acceptance 3: `baichuan eval` over all C-Eval val subjects and all MMLU test subjects on a tiny
random model on CPU produces the tables, plot and per-subject files; the C-Eval test split gives
the submission JSON; a transformers folder evaluates too. (MMLU runs all 57 subjects with a few
questions each here; the full 14042-question run is timed in docs/evaluation.md.)"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from baichuan.checkpoint import save_model
from baichuan.cli import main
from baichuan.config import ModelConfig
from baichuan.evaluation.subjects import CEVAL_SUBJECTS
from baichuan.model import BaichuanForCausalLM
from helpers import BAICHUAN_SPM as SPM
from helpers import EVAL_DATA as DATA
from helpers import need_shared_mark

pytestmark = [need_shared_mark(DATA, SPM), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", max_position_embeddings=4096))
    folder = tmp_path_factory.mktemp("tiny-model")
    save_model(model, folder)
    shutil.copyfile(SPM, folder / "tokenizer.model")  # a model folder carries its tokenizer
    return folder


def test_ceval_val_all_subjects(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ceval"
    rc = main(["eval", "--task", "ceval", "--data-dir", str(DATA), "--model", str(tiny_model_dir),
               "--split", "val", "--batch-size", "32", "--output", str(out), "--no-progress"])
    assert rc == 0
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| Model | Average | Avg(Hard) | STEM | Social Sciences | Humanities | Others |" in summary
    assert "1346 questions in 52 subjects" in summary
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["subjects"]) == set(CEVAL_SUBJECTS)
    assert sum(v["questions"] for v in results["subjects"].values()) == 1346
    assert 0.0 <= results["columns"]["Average"] <= 1.0
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "subjects" / "computer_network.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 19
    assert {"id", "answer", "prediction", "correct", "prob_A", "prob_D", "logit_A"} <= set(rows[0])
    assert abs(sum(float(rows[0][f"prob_{x}"]) for x in "ABCD") - 1) < 1e-4
    assert "ceval val 5-shot, 1346 questions" in capsys.readouterr().out


def test_mmlu_test_all_subjects(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mmlu"
    rc = main(["eval", "--task", "mmlu", "--data-dir", str(DATA / "mmlu"), "--model", str(tiny_model_dir),
               "--limit", "6", "--batch-size", "32", "--output", str(out), "--no-progress"])
    assert rc == 0
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| Model | Humanities | Social Sciences | STEM | Other | Average |" in summary
    assert "342 questions in 57 subjects" in summary
    assert (out / "accuracy.png").is_file()
    assert len(list((out / "subjects").glob("*.json"))) == 57


def test_ceval_test_split_submission(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ceval-test"
    rc = main(["eval", "--task", "ceval", "--data-dir", str(DATA / "ceval"), "--model", str(tiny_model_dir),
               "--split", "test", "--subjects", "law", "logic", "--limit", "5", "--output", str(out),
               "--no-progress", "--show-prompts"])
    assert rc == 0
    sub = json.loads((out / "submission.json").read_text(encoding="utf-8"))
    assert set(sub) == {"law", "logic"}
    assert list(sub["law"]) == ["0", "1", "2", "3", "4"] and set(sub["law"].values()) <= set("ABCD")
    assert "no answers" in (out / "summary.md").read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert "(Start>>>)以下是中国关于法学考试的单项选择题" in printed


@pytest.mark.parametrize("task", ["cmmlu", "agieval", "gaokao"])
def test_other_benchmarks_run(tiny_model_dir: Path, tmp_path: Path, task: str) -> None:
    out = tmp_path / task
    rc = main(["eval", "--task", task, "--data-dir", str(DATA), "--model", str(tiny_model_dir),
               "--limit", "3", "--batch-size", "8", "--output", str(out), "--no-progress"])
    assert rc == 0
    assert (out / "summary.md").is_file() and (out / "accuracy.png").is_file()


def test_transformers_folder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
    torch.manual_seed(0)
    folder = tmp_path / "hf"
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    out = tmp_path / "out"
    rc = main(["eval", "--task", "mmlu", "--data-dir", str(DATA), "--model", str(folder), "--tokenizer", str(SPM),
               "--subjects", "anatomy", "--limit", "8", "--output", str(out), "--no-progress"])
    assert rc == 0
    assert json.loads((out / "results.json").read_text())["questions"] == 8


def test_errors_name_the_input(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--task", "ceval", "--data-dir", str(tmp_path / "nope"), "--model",
                 str(tiny_model_dir), "--no-progress"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["eval", "--task", "ceval", "--data-dir", str(DATA), "--model", str(tiny_model_dir),
                 "--subjects", "astrology", "--no-progress"]) == 2
    assert "astrology" in capsys.readouterr().err


def _script(name: str):  # noqa: ANN202
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "evaluation" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"evaluation_{name}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_upstream_style_entry_points(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mmlu = _script("evaluate_mmlu")
    assert mmlu.main(["-m", str(tiny_model_dir), "-d", str(DATA / "mmlu"), "-s", str(tmp_path / "r"),
                      "--subjects", "anatomy", "virology", "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    assert "Average accuracy" in printed and " - anatomy" in printed and " - health" in printed
    assert (tmp_path / "r" / f"results_{tiny_model_dir.name}" / "subjects" / "anatomy.csv").is_file()
    zh = _script("evaluate_zh")
    assert zh.main(["--model_id", str(tiny_model_dir), "--data_path", str(DATA / "ceval"), "--task", "ceval",
                    "--split", "val", "--subjects", "law", "--limit", "4", "--save_dir", str(tmp_path / "z")]) == 0
    printed = capsys.readouterr().out
    assert "Average example acc" in printed and "Average subject acc" in printed


def test_exported_folder_matches_native(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`baichuan export-hf` output loads into our model (no remote code) with identical results;
    the same folder through AutoModelForCausalLM + its remote code agrees too."""
    from baichuan.hf import export_hf

    exported = export_hf(tiny_model_dir, tmp_path / "exported")
    common = ["eval", "--task", "ceval", "--data-dir", str(DATA), "--split", "val", "--subjects", "law",
              "--limit", "6", "--no-progress"]
    preds = {}
    for name, extra in [("native", ["--model", str(tiny_model_dir)]),
                        ("exported", ["--model", str(exported)]),
                        ("remote", ["--model", str(exported), "--backend", "transformers", "--trust-remote-code"])]:
        assert main([*common, *extra, "--output", str(tmp_path / name)]) == 0
        rows = json.loads((tmp_path / name / "subjects" / "law.json").read_text())["questions"]
        preds[name] = [(r["prediction"], r["prob_A"]) for r in rows]
    assert preds["native"] == preds["exported"]
    assert [p for p, _ in preds["remote"]] == [p for p, _ in preds["native"]]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(preds["remote"], preds["native"]))
