"""Training pieces that need no launcher: the DeepSpeed config merge, hostfile parsing, checkpoint
pruning, and `baichuan train`'s errors on bad input (the loss is tested in tests/test_loss.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baichuan.cli import main as cli_main
from baichuan.launch import LaunchError, deepspeed_command, parse_hostfile
from baichuan.train import prune_checkpoints
from baichuan.train_config import DEFAULT_DEEPSPEED, TrainConfig, build_deepspeed_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPM = SHARED / "spm-models" / "llama2.model"
OTHER_SPM = SHARED / "spm-models" / "mistral-7b-v1.model"


# ------------------------------------------------------------------------------ configuration
def test_deepspeed_config_defaults_and_overrides(tmp_path: Path) -> None:
    shipped = json.loads((REPO / "config" / "deepspeed.json").read_text())
    assert shipped == DEFAULT_DEEPSPEED, "config/deepspeed.json and DEFAULT_DEEPSPEED must agree"
    opt = shipped["optimizer"]["params"]
    assert opt["betas"] == [0.9, 0.95] and opt["eps"] == 1e-8 and opt["weight_decay"] == 0.1
    assert shipped["zero_optimization"]["stage"] == 2 and shipped["bf16"]["enabled"]
    assert shipped["gradient_clipping"] == 1.0 and shipped["tensorboard"]["enabled"]
    assert shipped["scheduler"]["type"] == "WarmupCosineLR" and opt["lr"] > 1e-6
    cfg = TrainConfig(data="d", output_dir=str(tmp_path), steps=50, lr=1e-4, warmup_steps=500, zero_stage=3,
                      precision="fp32", micro_batch_size=4, gradient_accumulation_steps=2)
    ds = build_deepspeed_config(cfg, cpu=True)
    assert ds["optimizer"]["params"]["lr"] == 1e-4 and ds["optimizer"]["params"]["torch_adam"]
    assert ds["scheduler"]["params"]["total_num_steps"] == 50
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 50  # capped at the run length
    assert ds["zero_optimization"]["stage"] == 3 and not ds["bf16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["tensorboard"]["output_path"] == str(tmp_path / "tensorboard")
    rt = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert rt == cfg
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"dataa": 1})
    TrainConfig(data="d", output_dir="o", save_every=0).validate()  # 0 = never checkpoint
    with pytest.raises(ValueError, match="save-every must be >= 0"):
        TrainConfig(data="d", output_dir="o", save_every=-1).validate()


def test_hostfile_parsing(tmp_path: Path) -> None:
    shipped = parse_hostfile(REPO / "config" / "hostfile")
    assert shipped and all(v > 0 for v in shipped.values())
    hf = tmp_path / "hostfile"
    hf.write_text("# comment\nworker-1 slots=8\n\n10.0.0.2 slots=4  # trailing\n")
    assert parse_hostfile(hf) == {"worker-1": 8, "10.0.0.2": 4}
    with pytest.raises(LaunchError, match="hostfile not found"):
        parse_hostfile(tmp_path / "missing")
    hf.write_text("[master address] slots=8\n")
    with pytest.raises(LaunchError, match=r"hostfile:1: expected 'HOSTNAME slots=N'"):
        parse_hostfile(hf)
    hf.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LaunchError, match="cannot be read"):
        parse_hostfile(hf)
    cmd = deepspeed_command("x.json", 2, master_port=1234)
    assert cmd[-5:] == ["--no_local_rank", "--module", "baichuan.train", "--config", "x.json"]
    assert "--num_gpus" in cmd and cmd[cmd.index("--num_gpus") + 1] == "2"


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for s in (5, 10, 15, 20):
        (tmp_path / f"step-{s}").mkdir()
    assert prune_checkpoints(tmp_path, 2, protect="step-20") == ["step-5", "step-10"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-15", "step-20"]


# ------------------------------------------------------------------------------ bad input (CLI)
def _err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli_main(["train", *argv]) == 2
    return capsys.readouterr().err


def test_bad_input_gives_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_data import synthetic_shards, write_shards

    base = ["--output-dir", str(tmp_path / "run"), "--model", "tiny", "--no-progress"]
    assert "training data not found" in _err(capsys, ["--data", str(tmp_path / "missing"), *base])
    assert "no training data given" in _err(capsys, base)
    tok = tmp_path / "t.model"
    tok.write_bytes(b"x")
    empty = write_shards(tmp_path / "empty", [], tok, 32000, n_shards=1)
    assert "hold no tokens" in _err(capsys, ["--data", str(empty), *base])
    big = synthetic_shards(tmp_path / "big")
    m = json.loads((big / "manifest.json").read_text())
    m["tokenizer"]["vocab_size"] = 70000
    (big / "manifest.json").write_text(json.dumps(m))
    assert "does not fit dtype uint16" in _err(capsys, ["--data", str(big), *base])
    assert "hostfile not found" in _err(capsys, ["--data", str(empty), "--hostfile", str(tmp_path / "nohost"), *base])
    if SPM.is_file() and OTHER_SPM.is_file():
        shards = synthetic_shards(tmp_path / "llama")
        m = json.loads((shards / "manifest.json").read_text())
        from baichuan.data import file_sha256

        m["tokenizer"]["sha256"] = file_sha256(SPM)
        (shards / "manifest.json").write_text(json.dumps(m))
        err = _err(capsys, ["--data", str(shards), "--tokenizer", str(OTHER_SPM), *base])
        assert "different tokenizer" in err and "re-run `baichuan tokenize`" in err


def test_train_sh_rejects_an_unreadable_hostfile(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "train.sh"), "--data", str(tmp_path)],
        env={**os.environ, "HOSTFILE": str(tmp_path / "nope"), "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0 and "hostfile not found" in r.stderr


# ------------------------------------------------------------------ DeepSpeed's CPU extension
def test_deepspeed_extension_folder_is_per_environment_and_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from baichuan import launch

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    if os.access(sys.prefix, os.W_OK):  # inside this environment
        assert launch.extensions_dir() == Path(sys.prefix) / "var" / "baichuan" / "torch_extensions"
    # a read-only environment: a folder of the user cache keyed by sys.prefix, one per environment
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "prefix", "/nonexistent/env-a")
    a = launch.extensions_dir()
    monkeypatch.setattr(sys, "prefix", "/nonexistent/env-b")
    b = launch.extensions_dir()
    assert a != b and a.parent == b.parent == tmp_path / "cache" / "baichuan" / "torch_extensions"
    # one line before the first build, nothing once it is built; a user's TORCH_EXTENSIONS_DIR wins
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    import deepspeed.ops

    if not deepspeed.ops.__compatible_ops__.get(launch.SHM_EXTENSION, False):
        pytest.skip("DeepSpeed cannot build its CPU extension here")
    assert launch.announce_extension_build() is True
    assert capsys.readouterr().err == (
        f"DeepSpeed compiles its CPU communication extension (deepspeed_shm_comm) into {tmp_path / 'ext'} once "
        "for this environment: about 1-2 minutes with no output, later runs reuse it\n"
    )
    (tmp_path / "ext" / "deepspeed_shm_comm").mkdir(parents=True)
    (tmp_path / "ext" / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    assert launch.announce_extension_build() is False and capsys.readouterr().err == ""


# ------------------------------------------------------------------------- plan_run (no torch)
_PLAN_SCRIPT = r"""
import json, sys
from dataclasses import replace
from pathlib import Path

sys.modules["torch"] = None  # any torch import fails
from baichuan.train import DistEnv, plan_run, prepare_run_dir
from baichuan.train_config import TrainConfig

data, out, spm = sys.argv[1:4]
cfg = TrainConfig(data=data, tokenizer=spm, output_dir=out, model="tiny", max_length=16, steps=4,
                  precision="fp32", micro_batch_size=2, gradient_accumulation_steps=3)
p = plan_run(cfg, DistEnv(0, 0, 1))
print(json.dumps({"vocab": p.model_config.vocab_size, "micro": p.micro_batch, "accum": p.grad_accum,
                  "zero": p.zero_stage, "tag": p.tag, "from": p.expected_from}))
prepare_run_dir(cfg)
ck = Path(out) / "checkpoints" / "step-2"
ck.mkdir(parents=True)
(ck / "trainer_state_rank00000.json").write_text(json.dumps({"step": 2, "data": {}, "world_size": 1}))
(Path(out) / "checkpoints" / "latest").write_text("step-2\n")
(Path(out) / "run.json").write_text(json.dumps({"model_config": p.model_config.to_dict(),
                                                 "tokenizer_sha256": p.data_sha}))
q = plan_run(replace(cfg, resume=True, resume_tag="step-2"), DistEnv(0, 0, 1))
print(json.dumps({"tag": q.tag, "step": q.rank_state["step"], "from": q.expected_from}))
"""


def test_plan_run_resolves_a_run_without_torch(tmp_path: Path) -> None:
    """`train.plan_run`: model config (vocab from the tokenizer), DeepSpeed config, the checkpoint to
    resume with its trainer state and recorded tokenizer, all with torch unimportable."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("some text to train on\n")
    r = subprocess.run([sys.executable, "-c", _PLAN_SCRIPT, str(tmp_path / "data"), str(tmp_path / "run"), str(SPM)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, resumed = (json.loads(line) for line in r.stdout.splitlines())
    assert first == {"vocab": 32000, "micro": 2, "accum": 3, "zero": 2, "tag": None, "from": f"--tokenizer {SPM}"}
    assert resumed == {"tag": "step-2", "step": 2, "from": f"recorded in {tmp_path / 'run' / 'run.json'}"}
