"""SIGTERM / Ctrl-C to `baichuan train --num-procs 2`: every process of the run stops, the state stays
resumable, the exit status says which signal, and the output is one line per process at most.

The real run uses two gloo ranks of the tiny model on synthetic shards (no ../shared needed); the
Ctrl-C case checks the same process-group forwarding on a stand-in process tree (no DeepSpeed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_data import synthetic_shards  # noqa: E402

SAVE = 4


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def train_args(data: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "baichuan", "train", "--num-procs", "2", "--data", str(data), "--output-dir", str(out),
        "--model", "tiny", "--max-length", "32", "--micro-batch-size", "2", "--steps", str(steps), "--lr", "2e-3",
        "--warmup-steps", "2", "--precision", "fp32", "--seed", "5", "--save-every", str(SAVE), "--keep-last", "2",
        "--log-every", "1", "--no-progress", "--no-tensorboard", "--no-plot",
    ]


def metric_steps(out: Path) -> dict[int, float]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return {}
    got = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        got[r["step"]] = r["loss"]
    return got


def test_sigterm_stops_every_rank_and_resume_continues_to_the_same_losses(tmp_path: Path) -> None:
    data = synthetic_shards(tmp_path / "data", n_docs=400)
    out = tmp_path / "run"
    steps = 2000  # far more than it gets to: the signal comes after the first checkpoint
    log = open(tmp_path / "log", "w+")
    top = subprocess.Popen(train_args(data, out, steps), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # past the first checkpoint by two steps
            if (out / "checkpoints" / "latest").is_file() and max(metric_steps(out), default=0) >= SAVE + 2:
                break
            assert top.poll() is None, open(tmp_path / "log").read()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("no checkpoint before the timeout")
        tree = psutil.Process(top.pid).children(recursive=True)
        ranks = [p for p in tree if "baichuan.train" in p.cmdline() and "deepspeed.launcher" not in " ".join(p.cmdline())]
        assert len(ranks) == 2, [p.cmdline() for p in tree]
        t0 = time.monotonic()
        top.send_signal(signal.SIGTERM)  # what `kill PID` or a scheduler does: the top process only
        assert top.wait(timeout=30) == 143
        gone_after = time.monotonic() - t0
        assert not alive(tree), [p.cmdline() for p in alive(tree)]
        assert gone_after < 15, gone_after
    finally:
        for p in alive(tree):
            p.kill()
        if top.poll() is None:
            top.kill()
    killed_log = (tmp_path / "log").read_text()
    assert "Traceback" not in killed_log
    tag = (out / "checkpoints" / "latest").read_text().strip()
    stopped = [line for line in killed_log.splitlines() if "stopped by" in line]
    assert stopped == [
        f"baichuan train: stopped by SIGTERM; all ranks ended; the last complete checkpoint is "
        f"{out / 'checkpoints' / tag}; continue with --resume (--output-dir {out})"
    ]
    before = metric_steps(out)
    saved = int(tag.split("-")[1])
    assert max(before) > saved
    # --resume continues from the checkpoint (a plain rerun is refused: tests/test_safety_outputs.py)
    upto = max(before)
    r = _run_until([*train_args(data, out, steps), "--resume"], out, upto, tmp_path / "resume.log")
    assert f"resumed from {out / 'checkpoints' / tag} at step {saved}" in r
    after = metric_steps(out)
    for s in range(1, upto + 1):
        assert after[s] == before[s], f"step {s}: {after[s]} != {before[s]}"


def _run_until(args: list[str], out: Path, step: int, log_path: Path) -> str:
    """Run ``args`` (a resume) until it logs ``step`` again; then Ctrl-C it as a terminal does (SIGINT
    to the foreground process group: the command's own group, not the launcher's session)."""
    log = open(log_path, "w+")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        # metrics.jsonl is cut back to the checkpoint when the resumed run logs "resumed from"
        while "resumed from" not in log_path.read_text() or max(metric_steps(out), default=0) < step:
            assert p.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the resumed run did not reach the step"
            time.sleep(0.1)
        tree = psutil.Process(p.pid).children(recursive=True)
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(timeout=30) == 130
        assert not alive(tree)
    finally:
        for child in alive(tree):
            child.kill()
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert [line for line in text.splitlines() if "stopped by" in line or "interrupted" in line] == [
        f"baichuan train: stopped by SIGINT; all ranks ended; the last complete checkpoint is "
        f"{out / 'checkpoints' / (out / 'checkpoints' / 'latest').read_text().strip()}; "
        f"continue with --resume (--output-dir {out})"
    ]
    return text


STAND_IN = r"""
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)]
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_launching_process_ends_its_whole_process_group(tmp_path: Path, sig: int, status: int) -> None:
    """`launch._run_group` (what `baichuan train --num-procs` runs DeepSpeed's launcher under) with
    a stand-in launcher that starts two children: one line, the signal's exit status, no orphans."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\nfrom baichuan.launch import _run_group\nfrom baichuan.train_config import TrainConfig\n"
        f"cfg = TrainConfig(data='d', output_dir={str(tmp_path / 'run')!r})\n"
        f"sys.exit(_run_group([sys.executable, '-c', {STAND_IN!r}], dict(__import__('os').environ), cfg, 5.0))\n"
    )
    p = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        tree = psutil.Process(p.pid).children(recursive=True)
        assert len(tree) == 3
        p.send_signal(sig)
        assert p.wait(timeout=20) == status
        deadline = time.monotonic() + 5
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(tree)
        err = p.stderr.read() if p.stderr else ""
        name = signal.Signals(sig).name
        assert err == (
            f"baichuan train: stopped by {name}; all ranks ended; no checkpoint was completed; "
            f"continue with --resume (--output-dir {tmp_path / 'run'})\n"
        )
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def test_sigterm_to_a_one_process_run_is_one_line_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    data = synthetic_shards(tmp_path / "data")
    out = tmp_path / "run"
    args = train_args(data, out, 2000)
    i = args.index("--num-procs")
    del args[i:i + 2]  # one process: no launcher
    log_path = tmp_path / "log"
    p = subprocess.Popen(args, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "latest").is_file():
            assert p.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = log_path.read_text()
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert "Traceback" not in text
    assert text.splitlines()[-1] == (
        f"baichuan train: stopped by SIGTERM; the last complete checkpoint is {out / 'checkpoints' / tag}; "
        f"continue with --resume (--output-dir {out})"
    )


def test_launcher_removes_only_its_own_jobs_shm_buffers(tmp_path: Path) -> None:
    """DeepSpeed's CPU all-reduce leaves /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>
    behind; the launcher removes those of its job's port and nothing else."""
    from baichuan.extensions import remove_shm_buffers, shm_buffers

    uid = os.getuid()
    ours = [f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29500_{r}" for r in (0, 1)]
    others = [
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29501_0",  # another job's port
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_129500_0",  # a port that only ends the same
        f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_29500_0",  # another user's
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29500_x",  # not a rank
        "my_notes_29500_0",  # not DeepSpeed's
    ]
    for n in ours + others:
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in shm_buffers(29500, tmp_path)] == ours
    assert [p.name for p in remove_shm_buffers(29500, tmp_path)] == ours
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert remove_shm_buffers(29500, tmp_path / "absent") == []
