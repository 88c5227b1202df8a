"""Flags that could destroy work: `train` into a previous run, `--overwrite` of export-hf/demo/train.

Every refusal is checked end to end through the command line (``baichuan.cli.main``), and the files
that were there before are byte-identical afterwards. No DeepSpeed run is needed: every refusal
happens in the command's own process before any rank starts (the SIGTERM test with real ranks is
tests/test_train_signals.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baichuan.cli import main as cli_main
from baichuan.errors import RefusedError
from baichuan.safety import MARKER, plan_output

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BAICHUAN_SPM = SHARED / "spm-models" / "baichuan-7b.model"


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (and '<dir>' for folders)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = cli_main(argv)
    return code, capsys.readouterr().err


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data import synthetic_shards

    return synthetic_shards(tmp_path / "data")


def fake_previous_run(run: Path, steps: int = 60) -> None:
    """A run directory as `baichuan train` leaves it after 60 steps (files with the real names)."""
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"train_config": {}, "model_config": {}, "tokenizer_sha256": None}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0 - s / 10}) + "\n" for s in range(1, steps + 1)))
    for s in (40, 50, 60):
        (run / "checkpoints" / f"step-{s}").mkdir()
        (run / "checkpoints" / f"step-{s}" / "mp_rank_00_model_states.pt").write_bytes(os.urandom(64))
    (run / "checkpoints" / "latest").write_text("step-60\n")
    (run / "notes.txt").write_text("the user's own notes\n")


def train_argv(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--output-dir", str(run), "--model", "tiny", "--max-length", "32",
            "--steps", "2", "--precision", "fp32", "--no-progress", *extra]


# ------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("procs", [(), ("--num-procs", "2")])
def test_train_refuses_a_run_directory_holding_a_run(tmp_path, shards, capsys, procs) -> None:
    run = tmp_path / "run"
    fake_previous_run(run)
    before = snapshot(run)
    t0 = time.monotonic()
    code, err = cli(capsys, train_argv(shards, run, *procs))
    assert code == 2
    assert err == (
        f"baichuan train: error: {run} already holds a training run (checkpoints, metrics.jsonl, run.json); "
        "pass --resume to continue it, --overwrite to delete it and start again, or choose another --output-dir\n"
    )
    assert time.monotonic() - t0 < 10  # refused here, before DeepSpeed would start any rank
    assert snapshot(run) == before


def test_train_overwrite_deletes_only_the_previous_run(tmp_path, shards) -> None:
    from baichuan.train import prepare_run_dir
    from baichuan.train_config import TrainConfig

    run = tmp_path / "run"
    fake_previous_run(run)
    notes = (run / "notes.txt").read_bytes()
    prepare_run_dir(TrainConfig(data=str(shards), output_dir=str(run), overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "notes.txt"]
    assert (run / "notes.txt").read_bytes() == notes
    assert json.loads((run / MARKER).read_text())["kind"] == "train"


def test_train_overwrite_never_deletes_its_own_input(tmp_path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data import synthetic_shards

    run = tmp_path / "run"
    fake_previous_run(run)
    data = synthetic_shards(run / "checkpoints" / "data")  # the data lives inside the old run's checkpoints/
    before = snapshot(run)
    code, err = cli(capsys, train_argv(data, run, "--overwrite"))
    assert code == 2
    assert err == (
        f"baichuan train: error: --overwrite would delete {run / 'checkpoints'}, which holds the input {data} "
        "this command reads; choose another --output-dir\n"
    )
    assert snapshot(run) == before


def test_train_overwrite_refuses_a_folder_it_did_not_write(tmp_path, shards, capsys) -> None:
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "precious.bin").write_bytes(b"\x00" * 10)
    before = snapshot(out)
    code, err = cli(capsys, train_argv(shards, out, "--overwrite"))
    assert code == 2
    assert "not a run written by `baichuan train`, so --overwrite deletes nothing there" in err
    assert snapshot(out) == before


def test_train_resume_and_overwrite_together_are_refused(tmp_path, shards, capsys) -> None:
    run = tmp_path / "run"
    fake_previous_run(run)
    before = snapshot(run)
    code, err = cli(capsys, train_argv(shards, run, "--resume", "--overwrite"))
    assert (code, err) == (2, "baichuan train: error: --overwrite and --resume contradict each other; pass one of them\n")
    assert snapshot(run) == before


# ---------------------------------------------------------------------- train: validation
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--lr", "-1e-3"), "--lr must be > 0, got -0.001"),
        (("--lr", "nan"), "--lr must be a finite number, got nan"),
        (("--lr", "0"), "--lr must be > 0, got 0"),
        (("--min-lr-ratio", "1.5"), "--min-lr-ratio must be >= 0 and <= 1, got 1.5"),
        (("--weight-decay", "-0.1"), "--weight-decay must be >= 0, got -0.1"),
        (("--steps", "-5"), "--steps must be positive, got -5"),
        (("--num-procs", "-2"), "--num-procs must be positive, got -2"),
        (("--micro-batch-size", "0"), "--micro-batch-size must be positive, got 0"),
    ],
)
def test_train_validates_flags_before_anything_is_written(tmp_path, shards, capsys, flags, message) -> None:
    run = tmp_path / "run"
    code, err = cli(capsys, train_argv(shards, run, "--num-procs", "2", *flags))
    assert (code, err) == (2, f"baichuan train: error: {message}\n")
    assert not run.exists()


def test_train_checks_data_in_its_own_process_before_ranks_start(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    t0 = time.monotonic()
    code, err = cli(capsys, train_argv(tmp_path / "missing", run, "--num-procs", "2"))
    assert (code, err) == (2, f"baichuan train: error: training data not found: {tmp_path / 'missing'}\n")
    assert time.monotonic() - t0 < 10 and not run.exists()  # no train_config.json left behind


# --------------------------------------------------------------------------------- export-hf
@pytest.fixture()
def native(tmp_path: Path) -> Path:
    """X/ckpt/model: a real native model folder (tiny, vocab 64000) with Baichuan-7B's tokenizer."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    import shutil

    import torch

    from baichuan.checkpoint import save_model
    from baichuan.config import ModelConfig
    from baichuan.model import BaichuanForCausalLM

    torch.manual_seed(0)
    model_dir = tmp_path / "X" / "ckpt" / "model"
    save_model(BaichuanForCausalLM(ModelConfig.preset("tiny")), model_dir)
    shutil.copyfile(BAICHUAN_SPM, model_dir / "tokenizer.model")
    (tmp_path / "X" / "unrelated.txt").write_text("not ours\n")
    return model_dir


def test_export_overwrite_refuses_the_folder_holding_its_checkpoint(tmp_path, native, capsys) -> None:
    x = tmp_path / "X"
    before = snapshot(x)
    code, err = cli(capsys, ["export-hf", "--checkpoint", str(native), "--output", str(x), "--overwrite"])
    assert code == 2
    assert err == (
        f"baichuan export-hf: error: {x} is not empty and was not written by `baichuan export-hf` (no {MARKER}); "
        "--overwrite deletes only a folder this command wrote. Choose an empty or new --output\n"
    )
    assert snapshot(x) == before


def test_export_without_overwrite_refuses_a_non_empty_folder(tmp_path, native, capsys) -> None:
    x = tmp_path / "X"
    before = snapshot(x)
    code, err = cli(capsys, ["export-hf", "--checkpoint", str(native), "--output", str(x)])
    expected = f"baichuan export-hf: error: {x} is not empty; pass --overwrite to replace it, or choose another --output\n"
    assert (code, err) == (2, expected)
    assert snapshot(x) == before


def test_export_overwrite_replaces_its_own_output_only(tmp_path, native, capsys) -> None:
    hf = tmp_path / "hf"
    assert cli(capsys, ["export-hf", "--checkpoint", str(native), "--output", str(hf)])[0] == 0
    first = snapshot(hf)
    assert MARKER in first and "config.json" in first
    # again with --overwrite: the same folder, rewritten
    assert cli(capsys, ["export-hf", "--checkpoint", str(native), "--output", str(hf), "--overwrite"])[0] == 0
    assert snapshot(hf) == first
    # a user's file next to the export: the whole folder is refused, nothing deleted
    (hf / "my_eval_results.csv").write_text("a,b\n")
    before = snapshot(hf)
    code, err = cli(capsys, ["export-hf", "--checkpoint", str(native), "--output", str(hf), "--overwrite"])
    assert code == 2
    assert err == (
        f"baichuan export-hf: error: {hf} also holds files `baichuan export-hf` did not write (my_eval_results.csv); "
        "--overwrite deletes only this command's own output. Move them away or choose another --output\n"
    )
    assert snapshot(hf) == before
    # the tokenizer it reads lives in the folder it would replace
    (hf / "my_eval_results.csv").unlink()
    before = snapshot(hf)
    code, err = cli(capsys, ["export-hf", "--checkpoint", str(native), "--tokenizer", str(hf / "tokenizer.model"),
                             "--output", str(hf), "--overwrite"])
    assert code == 2
    assert err == (
        f"baichuan export-hf: error: --overwrite would delete {hf / 'tokenizer.model'}, which holds the input "
        f"{hf / 'tokenizer.model'} this command reads; choose another --output\n"
    )
    assert snapshot(hf) == before


# -------------------------------------------------------------------------------------- demo
def test_demo_overwrite_refuses_the_current_directory(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis.tex").write_text("years of work\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print(1)\n")
    before = snapshot(tmp_path)
    code, err = cli(capsys, ["demo", "--output", ".", "--overwrite"])
    assert code == 2
    assert err == (
        f"baichuan demo: error: . is not empty and was not written by `baichuan demo` (no {MARKER}); --overwrite "
        "deletes only a folder this command wrote. Choose an empty or new --output\n"
    )
    assert snapshot(tmp_path) == before
    # even a real previous demo output is never deleted when it is the current directory
    (tmp_path / "thesis.tex").unlink()
    import shutil

    shutil.rmtree(tmp_path / "src")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("x\n")
    (tmp_path / MARKER).write_text(json.dumps({"tool": "baichuan", "kind": "demo", "names": ["corpus"]}))
    before = snapshot(tmp_path)
    code, err = cli(capsys, ["demo", "--output", ".", "--overwrite"])
    assert (code, err) == (2, "baichuan demo: error: --overwrite refuses to delete anything in .: it is the current "
                              "directory or holds it; choose another --output\n")
    assert snapshot(tmp_path) == before


def test_demo_overwrite_refuses_home_and_root(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    (home / "corpus").mkdir(parents=True)
    (home / MARKER).write_text(json.dumps({"tool": "baichuan", "kind": "demo", "names": ["corpus"]}))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = snapshot(home)
    with pytest.raises(RefusedError, match=r"is / or the home directory"):
        plan_output(home, "demo", overwrite=True)
    with pytest.raises(RefusedError):
        plan_output("/", "demo", overwrite=True)  # no marker there: not written by demo
    assert snapshot(home) == before


def test_demo_overwrite_refuses_another_commands_output(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / MARKER).write_text(json.dumps({"tool": "baichuan", "kind": "export-hf", "names": []}))
    before = snapshot(out)
    code, err = cli(capsys, ["demo", "--output", str(out), "--overwrite"])
    assert (code, err) == (2, f"baichuan demo: error: {out} holds the output of `baichuan export-hf`, not of "
                              "`baichuan demo`; choose another --output\n")
    assert snapshot(out) == before


def test_demo_overwrite_replaces_a_previous_demo(tmp_path) -> None:
    from baichuan.safety import KINDS

    out = tmp_path / "demo"
    plan_output(out, "demo", overwrite=False).apply(KINDS["demo"].patterns)
    for name in ("corpus", "shards", "train"):
        (out / name).mkdir()
        (out / name / "f").write_text(name)
    (out / "tokenizer.model").write_bytes(b"m")
    hf = out / "hf"  # `baichuan export-hf --output demo/hf`, as the demo suggests: ours too
    plan_output(hf, "export-hf", overwrite=False).apply(["config.json"])
    (hf / "config.json").write_text("{}")
    with pytest.raises(RefusedError, match="holds a previous output; pass --overwrite"):
        plan_output(out, "demo", overwrite=False)
    plan_output(out, "demo", overwrite=True).apply(KINDS["demo"].patterns)
    assert [p.name for p in out.iterdir()] == [MARKER]


# ------------------------------------------------------------------------------- tokenize
def test_tokenize_overwrite_keeps_other_files(tmp_path) -> None:
    """`baichuan tokenize --overwrite` (Rust) already deletes only its own files; unchanged here."""
    if not BAICHUAN_SPM.is_file():
        pytest.skip("../shared is absent")
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("".join(f"line {i} " * 30 + "\n" for i in range(50)))
    out = tmp_path / "shards"
    out.mkdir()
    (out / "README").write_text("mine\n")
    args = [sys.executable, "-m", "baichuan", "tokenize", "--tokenizer", str(BAICHUAN_SPM), "--input", str(text),
            "--output", str(out), "--quiet", "--workers", "1"]
    assert subprocess.run(args, capture_output=True, timeout=120).returncode == 0
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--overwrite" in r.stderr
    assert subprocess.run([*args, "--overwrite"], capture_output=True, timeout=120).returncode == 0
    assert (out / "README").read_text() == "mine\n"


def test_a_nested_output_holding_other_files_is_not_deleted(tmp_path) -> None:
    from baichuan.safety import KINDS

    out = tmp_path / "demo"
    plan_output(out, "demo", overwrite=False).apply(KINDS["demo"].patterns)
    (out / "corpus").mkdir()
    hf = out / "hf"
    plan_output(hf, "export-hf", overwrite=False).apply(["config.json"])
    (hf / "config.json").write_text("{}")
    (hf / "my_notes.md").write_text("mine\n")  # not written by export-hf: hf/ is not only ours
    before = snapshot(out)
    with pytest.raises(RefusedError, match=r"also holds files `baichuan demo` did not write \(hf\)"):
        plan_output(out, "demo", overwrite=True)
    assert snapshot(out) == before
