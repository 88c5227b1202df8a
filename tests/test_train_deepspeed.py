"""End-to-end training through DeepSpeed's launcher with 2 CPU ranks (gloo), on real text.

* a few dozen steps on token shards: the loss falls, the ranks see different data, checkpoints
  (DeepSpeed + native model folder) are written and pruned, metrics/TensorBoard/loss.png exist;
* exact resume for both data sources: a run killed with SIGKILL after its checkpoint at step K and
  resumed with ``--resume`` logs the same loss at every later step as the uninterrupted run;
* NaN/inf guard: injected non-finite losses are skipped and counted, and too many in a row stop
  the run with a clear message.

Each launch costs ~20-30 s of start-up on a 2-core machine, so the runs are few and short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import kill_tree
from test_data import MMLU, SPM, make_text_dir, tokenize_with_cli

pytestmark = pytest.mark.skipif(not SPM.is_file() or not MMLU.is_dir(), reason="../shared reference data not found")

STEPS = 24
SAVE = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    text = make_text_dir(root / "text", n_files=4, lines=150)
    shards = tokenize_with_cli(text, root / "shards")
    return {"text": text, "shards": shards, "root": root}


def train_args(data: Path, out: Path, steps: int = STEPS, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, "-m", "baichuan", "train", "--num-procs", "2",
        "--data", str(data), "--tokenizer", str(SPM), "--output-dir", str(out),
        "--model", "tiny", "--max-length", "64", "--micro-batch-size", "2", "--steps", str(steps),
        "--lr", "5e-3", "--warmup-steps", "4", "--precision", "fp32", "--seed", "11",
        "--save-every", str(SAVE), "--keep-last", "2", "--log-every", "4", "--no-progress", *extra,
    ]


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-6000:])
    return r


def metrics(out: Path) -> dict[int, dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def kill_after_checkpoint(args: list[str], out: Path, step: int, timeout: float = 240) -> None:
    """Start the run, wait for its checkpoint at ``step``, then SIGKILL the launcher and its ranks."""
    marker = str(out / "checkpoints" / f"step-{step}")
    log = open(out.parent / f"{out.name}-killed.log", "w+")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            log.seek(0)
            if f"checkpoint saved: {marker}" in log.read():
                break
            assert p.poll() is None, "the run ended before its checkpoint"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint before the timeout")
    finally:
        kill_tree(p)  # kill -9 of the command, DeepSpeed's launchers and both ranks
        log.close()


def _ds_shm_files() -> set[str]:
    from baichuan.extensions import SHM_BUFFER_PREFIX, SHM_DIR

    return {p.name for p in SHM_DIR.glob(f"{SHM_BUFFER_PREFIX}{os.getuid()}_*")}


@pytest.fixture(scope="module")
def shard_run(corpus: dict[str, Path]) -> Path:
    out = corpus["root"] / "run-shards"
    before = _ds_shm_files()
    r = run(train_args(corpus["shards"], out))
    assert r.returncode == 0
    # DeepSpeed never unlinks its per-rank /dev/shm all-reduce buffers; the launcher removes its job's
    assert _ds_shm_files() - before == set()
    return out


def test_two_ranks_train_on_real_shards(shard_run: Path) -> None:
    m = metrics(shard_run)
    assert sorted(m) == list(range(1, STEPS + 1))
    first = sum(m[s]["loss"] for s in (1, 2, 3)) / 3
    last = sum(m[s]["loss"] for s in (STEPS - 2, STEPS - 1, STEPS)) / 3
    assert first > 10.0 and first - last > 1.5, (first, last)  # ln(32000) = 10.37 at the start
    for r in m.values():  # both ranks, different sequences at every step
        assert len(r["rank_data_crc32"]) == 2 and r["rank_data_crc32"][0] != r["rank_data_crc32"][1]
        assert r["rank_losses"][0] != r["rank_losses"][1]
        assert r["tokens_per_s"] > 0 and r["grad_norm"] > 0 and r["lr"] >= 0
    ck = shard_run / "checkpoints"
    assert (ck / "latest").read_text().strip() == f"step-{STEPS}"
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-16", "step-24"]  # keep-last 2
    tag = ck / f"step-{STEPS}"
    assert (tag / "trainer_state_rank00000.json").is_file() and (tag / "trainer_state_rank00001.json").is_file()
    assert any(tag.glob("*optim_states.pt")) and (tag / "mp_rank_00_model_states.pt").is_file()
    from baichuan.checkpoint import load_model

    model = load_model(tag / "model")
    assert model.config.vocab_size == 32000 and model.config.num_hidden_layers == 2
    assert (tag / "model" / "tokenizer.model").read_bytes() == SPM.read_bytes()
    assert (shard_run / "loss.png").stat().st_size > 1000
    assert any((shard_run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    run_json = json.loads((shard_run / "run.json").read_text())
    assert run_json["world_size"] == 2 and run_json["deepspeed_config"]["zero_optimization"]["stage"] == 2


def _resume_matches(reference: Path, data: Path, out: Path, steps: int) -> None:
    args = train_args(data, out, steps)
    kill_after_checkpoint(args, out, SAVE)
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{SAVE}"
    r = run([*args, "--resume"])
    assert r.returncode == 0
    assert f"resumed from {out / 'checkpoints' / f'step-{SAVE}'} at step {SAVE}" in r.stderr
    ref, got = metrics(reference), metrics(out)
    assert sorted(got) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert got[s]["loss"] == ref[s]["loss"], f"step {s}: {got[s]['loss']} != {ref[s]['loss']}"
        assert got[s]["rank_data_crc32"] == ref[s]["rank_data_crc32"], f"step {s}: other data"


def test_exact_resume_after_kill_shards(corpus: dict[str, Path], shard_run: Path) -> None:
    _resume_matches(shard_run, corpus["shards"], corpus["root"] / "resume-shards", STEPS)


def test_exact_resume_after_kill_text_dir(corpus: dict[str, Path]) -> None:
    steps = 12
    ref = corpus["root"] / "run-text"
    r = run(train_args(corpus["text"], ref, steps))
    assert r.returncode == 0
    m = metrics(ref)
    assert all(x["rank_data_crc32"][0] != x["rank_data_crc32"][1] for x in m.values())
    _resume_matches(ref, corpus["text"], corpus["root"] / "resume-text", steps)


def test_nonfinite_losses_are_skipped_then_stop_the_run(corpus: dict[str, Path]) -> None:
    out = corpus["root"] / "nan"
    cfg = {
        "data": str(corpus["shards"]), "tokenizer": str(SPM), "output_dir": str(out), "model": "tiny",
        "max_length": 32, "micro_batch_size": 1, "steps": 12, "precision": "fp32", "progress": False,
        "plot": False, "tensorboard": False, "save_every": 100,
        "inject_nonfinite": [3, 7, 8], "max_nonfinite_in_row": 2,
    }
    out.mkdir(parents=True)
    (out / "cfg.json").write_text(json.dumps(cfg))
    r = run([sys.executable, "-m", "baichuan.train", "--config", str(out / "cfg.json")])  # one rank, no launcher
    assert r.returncode == 2
    assert "loss was NaN/inf for 2 micro-batches in a row" in r.stderr
    assert "non-finite loss, micro-batch skipped (1 in a row, 1 in all)" in r.stderr
    m = metrics(out)
    # micro-batch 3 was skipped: step 3 used micro-batch 4; micro-batches 7, 8 stopped the run after step 5
    assert sorted(m) == [1, 2, 3, 4, 5] and m[3]["nonfinite_skipped"] == 1


def test_save_every_zero_writes_no_checkpoint(corpus: dict[str, Path]) -> None:
    """Throughput runs (e.g. a 7B slice on a GPU) can skip the checkpoint: nothing under checkpoints/."""
    out = corpus["root"] / "nosave"
    cfg = {
        "data": str(corpus["shards"]), "tokenizer": str(SPM), "output_dir": str(out), "model": "tiny",
        "max_length": 32, "micro_batch_size": 1, "steps": 3, "precision": "fp32", "progress": False,
        "plot": False, "tensorboard": False, "save_every": 0,
    }
    out.mkdir(parents=True)
    (out / "cfg.json").write_text(json.dumps(cfg))
    r = run([sys.executable, "-m", "baichuan.train", "--config", str(out / "cfg.json")])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "save_every is 0: no checkpoint will be written" in r.stderr
    assert sorted(metrics(out)) == [1, 2, 3]
    ckpt = out / "checkpoints"
    assert not ckpt.exists() or not any(ckpt.iterdir())


def test_zero3_with_accumulation_and_activation_checkpointing(corpus: dict[str, Path]) -> None:
    """The full-7B settings on a tiny model: parameters partitioned from construction, gathered
    into the native model folder at save time."""
    out = corpus["root"] / "zero3"
    r = run([
        sys.executable, "-m", "baichuan", "train", "--data", str(corpus["shards"]), "--tokenizer", str(SPM),
        "--output-dir", str(out), "--model", "tiny", "--max-length", "32", "--micro-batch-size", "1",
        "--gradient-accumulation-steps", "2", "--zero-stage", "3", "--activation-checkpointing",
        "--steps", "3", "--precision", "fp32", "--lr", "5e-3", "--warmup-steps", "1", "--no-progress",
    ])
    assert r.returncode == 0
    assert "ZeRO-3" in r.stderr and "4.2M params" in r.stderr
    m = metrics(out)
    assert sorted(m) == [1, 2, 3] and all(x["grad_norm"] > 0 for x in m.values())
    from baichuan.checkpoint import load_model

    model = load_model(out / "checkpoints" / "step-3" / "model")
    w = model.model.layers[0].mlp.gate_proj.weight
    assert w.shape == (176, 64) and 0.01 < float(w.detach().std()) < 0.05  # initialised (std 0.02), not empty
    assert float(model.model.norm.weight.detach().mean()) > 0.5


def test_train_sh_launches_from_a_hostfile(corpus: dict[str, Path], tmp_path: Path) -> None:
    """scripts/train.sh: upstream's `deepspeed --hostfile ... --deepspeed_config config/deepspeed.json`."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two CPU ranks on this machine\nlocalhost slots=2\n")
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        ["bash", str(repo / "scripts" / "train.sh"), "--data", str(corpus["shards"]), "--tokenizer", str(SPM),
         "--output-dir", str(out), "--model", "tiny", "--max-length", "32", "--micro-batch-size", "1",
         "--steps", "2", "--precision", "fp32", "--no-progress"],
        env={**os.environ, "HOSTFILE": str(hostfile), "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 host(s), 2 slot(s)" in r.stderr and "2 rank(s) on cpu" in r.stderr
    ds = json.loads((out / "run.json").read_text())["deepspeed_config"]
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.95] and ds["zero_optimization"]["stage"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-2"


def test_init_from_a_trained_model_folder(corpus: dict[str, Path], shard_run: Path, tmp_path: Path) -> None:
    """Continued pre-training: --init-from the native folder of a checkpoint starts at its loss."""
    model_dir = shard_run / "checkpoints" / f"step-{STEPS}" / "model"
    out = tmp_path / "continued"
    r = run([
        sys.executable, "-m", "baichuan", "train", "--data", str(corpus["shards"]), "--init-from", str(model_dir),
        "--output-dir", str(out), "--max-length", "64", "--micro-batch-size", "2", "--steps", "2",
        "--lr", "1e-4", "--warmup-steps", "1", "--precision", "fp32", "--no-progress",
    ])
    assert r.returncode == 0
    first = metrics(out)[1]["loss"]
    trained = metrics(shard_run)[STEPS]["loss"]
    assert first < 9.0 and abs(first - trained) < 1.0, (first, trained)  # far below ln(32000) = 10.37
