"""Weighted mixtures and held-out validation through `baichuan train` (DeepSpeed, CPU ranks, gloo),
on real text tokenized with Llama-2's tokenizer:

* a 2-rank mixture run logs ``tokens_by_source`` (summing to ``tokens_seen``), ``epochs_by_source``
  and a source's epoch rollover, and ``val_loss`` / ``val_loss/<source>`` at the evaluation steps
  (metrics.jsonl, TensorBoard, one PNG with both curves);
* SIGKILL after a checkpoint + ``--resume`` gives the identical loss (and validation loss) sequence;
* the validation loss of the same weights is the same on 1 rank and on 2 ranks;
* --resume with another number of ranks: ZeRO-0 continues the same global sequence stream, ZeRO-2
  is refused in one line (DeepSpeed cannot re-partition its optimizer state);
* validation under ZeRO-3 with an uneven split across ranks.

The pure parts (schedule, positions, bad input) are in tests/test_mixture.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from test_data import MMLU, SPM, make_text_dir, spm_encoder, upstream_docs, write_shards
from test_train_deepspeed import kill_after_checkpoint, metrics, run

pytestmark = pytest.mark.skipif(not SPM.is_file() or not MMLU.is_dir(), reason="../shared reference data not found")

STEPS = 12
SAVE = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four shard directories from four MMLU files: three training sources and a held-out one."""
    root = tmp_path_factory.mktemp("mixture")
    text = make_text_dir(root / "text", n_files=4, lines=60)
    enc = spm_encoder()
    out = {"root": root}
    for name, f in zip(("zh", "en", "code", "held"), sorted(text.iterdir())):
        one = root / f"text-{name}"
        one.mkdir()
        (one / f.name).write_bytes(f.read_bytes())
        docs = upstream_docs(one, enc)
        if name == "code":
            docs = docs[:1]  # 3 sequences: small: it runs out and starts its next epoch within the run
        out[name] = write_shards(root / name, docs, SPM, 32000)
    return out


def args(c: dict[str, Path], out: Path, steps: int = STEPS, procs: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    launch = ["--num-procs", str(procs)] if procs > 1 else []
    return [
        sys.executable, "-m", "baichuan", "train", *launch,
        "--data", f"0.6:{c['zh']}", f"0.3:{c['en']}", f"0.1:{c['code']}",
        "--eval-data", f"0.5:{c['held']}", f"0.5:{c['code']}", "--eval-every", str(SAVE), "--eval-tokens", "224",
        "--tokenizer", str(SPM), "--output-dir", str(out), "--model", "tiny", "--max-length", "32",
        "--micro-batch-size", "2", "--steps", str(steps), "--lr", "5e-3", "--warmup-steps", "2", "--precision", "fp32",
        "--seed", "3", "--save-every", str(SAVE), "--keep-last", "5", "--log-every", "4", "--no-progress", *extra,
    ]


@pytest.fixture(scope="module")
def mixture_run(corpus: dict[str, Path]) -> tuple[Path, str]:
    out = corpus["root"] / "run"
    r = run(args(corpus, out))
    assert r.returncode == 0
    return out, r.stderr


def test_mixture_logs_tokens_by_source_and_validation(corpus: dict[str, Path], mixture_run: tuple[Path, str]) -> None:
    out, stderr = mixture_run
    m = metrics(out)
    names = [str(corpus[k]) for k in ("zh", "en", "code")]
    assert sorted(m) == list(range(1, STEPS + 1))
    for r in m.values():
        assert list(r["tokens_by_source"]) == names
        assert sum(r["tokens_by_source"].values()) == r["tokens_seen"] == r["step"] * 2 * 2 * 32
        assert r["rank_data_crc32"][0] != r["rank_data_crc32"][1]
    last = m[STEPS]["tokens_by_source"]
    shares = [last[n] / m[STEPS]["tokens_seen"] for n in names]
    assert all(abs(s - w) <= 0.03 for s, w in zip(shares, (0.6, 0.3, 0.1))), shares  # 48 sequences only
    assert m[STEPS]["epochs_by_source"][names[2]] >= 1  # the small source ran out and started again
    assert f"data: {names[2]} exhausted; starting its epoch 2 in a new order (epoch 1 done)" in stderr
    val_steps = [s for s, r in m.items() if "val_loss" in r]
    assert val_steps == [4, 8, 12]
    for s in val_steps:
        r = m[s]
        held, code = r[f"val_loss/{corpus['held']}"], r[f"val_loss/{corpus['code']}"]
        assert 0 < min(held, code) <= r["val_loss"] <= max(held, code)  # the mean lies between the sources'
        assert f"step {s}/{STEPS} validation loss {r['val_loss']:.4f} ppl {math.exp(r['val_loss']):.2f}; " \
            f"{corpus['held']}: loss {held:.4f}" in stderr
    assert m[12]["val_loss"] < m[4]["val_loss"]  # it learns
    assert f"--eval-data {corpus['code']} is also a training source (0.1:{corpus['code']}); its validation loss " \
        "is not held out" in stderr
    assert "validation every 4 steps: 7 held-out sequences of 33 tokens" in stderr
    assert (out / "loss.png").stat().st_size > 1000
    events = b"".join(p.read_bytes() for p in (out / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert b"val/loss" in events and b"val/ppl" in events and b"data/tokens/" in events


def test_mixture_exact_resume_after_kill(corpus: dict[str, Path], mixture_run: tuple[Path, str]) -> None:
    ref = metrics(mixture_run[0])
    out = corpus["root"] / "resumed"
    a = args(corpus, out)
    kill_after_checkpoint(a, out, SAVE)
    r = run([*a, "--resume"])
    assert r.returncode == 0
    got = metrics(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        for key in ("loss", "rank_data_crc32", "tokens_by_source", "epochs_by_source"):
            assert got[s][key] == ref[s][key], f"step {s} {key}: {got[s][key]} != {ref[s][key]}"
        assert got[s].get("val_loss") == ref[s].get("val_loss"), f"step {s}"


def test_validation_loss_is_the_same_on_one_and_two_ranks(corpus: dict[str, Path], mixture_run: tuple[Path, str]) -> None:
    """The same weights (a trained checkpoint; DeepSpeed's schedule gives step 1 lr 0) evaluated by
    1 rank and by 2 ranks: 7 held-out sequences, micro-batch 2, so the ranks' shares are uneven."""
    model = mixture_run[0] / "checkpoints" / f"step-{STEPS}" / "model"
    vals = []
    for procs in (1, 2):
        out = corpus["root"] / f"eval-{procs}"
        r = run([*args(corpus, out, steps=1, procs=procs), "--init-from", str(model), "--eval-every", "1"])
        assert r.returncode == 0
        m = metrics(out)[1]
        assert m["lr"] == 0.0
        vals.append({k: v for k, v in m.items() if k.startswith("val_loss")})
    one, two = vals
    assert len(one) == 3 and one.keys() == two.keys()
    for k in one:
        assert one[k] == pytest.approx(two[k], rel=1e-5, abs=0), k
    assert one["val_loss"] < 10.0  # the trained model, not a fresh one (ln 32000 = 10.37)


def test_resume_with_another_number_of_ranks(corpus: dict[str, Path], mixture_run: tuple[Path, str], tmp_path: Path) -> None:
    """ZeRO-0: a 2-rank checkpoint continues on 1 rank with the same global sequence stream. ZeRO-1/2/3
    partition the optimizer state by rank, which DeepSpeed cannot re-partition: one line, nothing run."""
    import json
    import shutil
    import zlib

    from baichuan.mixture import open_training_data

    copy = tmp_path / "zero2"
    shutil.copytree(mixture_run[0], copy)
    r = run([*args(corpus, copy, procs=1), "--resume"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"baichuan train: error: cannot resume {copy / 'checkpoints' / f'step-{STEPS}'} with 1 rank(s): it was saved "
        "by 2 ranks with ZeRO-2, whose optimizer state DeepSpeed cannot re-partition; resume with 2 ranks (a "
        "mixture's data position itself carries over to any number of ranks; docs/training.md)"
    )
    out = tmp_path / "zero0"
    extra = ("--zero-stage", "0", "--no-tensorboard", "--no-plot")
    assert run(args(corpus, out, steps=SAVE, extra=extra)).returncode == 0
    r = run([*args(corpus, out, steps=SAVE + 2, procs=1, extra=extra), "--resume"])
    assert r.returncode == 0
    m = metrics(out)
    state = json.loads((out / "checkpoints" / f"step-{SAVE}" / "trainer_state_rank00000.json").read_text())
    assert state["data"]["consumed"] == SAVE * 2 * 2  # 4 steps x 2 ranks x micro-batch 2
    src = open_training_data([f"0.6:{corpus['zh']}", f"0.3:{corpus['en']}", f"0.1:{corpus['code']}"], seq_len=33,
                             micro_batch=2, rank=0, world_size=1, seed=3, vocab_size=32000, state=state["data"])
    for s in (SAVE + 1, SAVE + 2):  # one rank now reads global sequences 16, 17, then 18, 19
        assert m[s]["rank_data_crc32"] == [zlib.crc32(src.next_batch().tobytes(), 0)]
        assert m[s]["tokens_by_source"] == src.tokens_by_source()


def test_validation_under_zero3(corpus: dict[str, Path], tmp_path: Path) -> None:
    """ZeRO-3 gathers parameters in every forward: both ranks run the same number of evaluation
    forwards although 7 held-out sequences split 4 + 3 (and 2 + 2 / 2 + 1 per source)."""
    out = tmp_path / "zero3"
    r = run(args(corpus, out, steps=2, extra=("--zero-stage", "3", "--eval-every", "1", "--no-tensorboard", "--no-plot")),
            timeout=240)
    assert r.returncode == 0
    m = metrics(out)
    assert all(math.isfinite(m[s]["val_loss"]) and len([k for k in m[s] if k.startswith("val_loss")]) == 3 for s in (1, 2))
