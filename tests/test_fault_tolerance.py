"""Issue 13: a training job recovers by itself from a dead rank, a hung rank and a damaged checkpoint.

Real runs: `baichuan train --num-procs 2` (two gloo CPU ranks through DeepSpeed's launcher), the
tiny model on synthetic shards, 12 steps with a checkpoint every 3. One uninterrupted run is the
reference (module fixture); every recovered run must log exactly its per-step losses. The launcher
loop itself (restart limit, SIGTERM is never restarted) is also checked on a stand-in process.

Each launch costs ~20-30 s of start-up on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import kill_tree  # noqa: E402
from test_data import SPM, synthetic_shards  # noqa: E402

STEPS = 12
SAVE = 3


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "baichuan", "train", "--num-procs", "2", "--data", str(data), "--output-dir", str(out),
        "--model", "tiny", "--max-length", "32", "--micro-batch-size", "2", "--steps", str(STEPS), "--lr", "2e-3",
        "--warmup-steps", "2", "--precision", "fp32", "--seed", "5", "--save-every", str(SAVE), "--keep-last", "4",
        "--log-every", "1", "--no-progress", "--no-tensorboard", "--no-plot", *extra,
    ]


def losses(out: Path) -> dict[int, float]:
    got = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        got[r["step"]] = r["loss"]
    return got


def restarts(out: Path) -> list[dict]:
    path = out / "restarts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def run(args: list[str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def ours(text: str) -> list[str]:
    """Lines of our own (DeepSpeed's start with a [timestamp])."""
    return [line for line in text.splitlines() if line.startswith("baichuan train:")]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("data"), n_docs=400)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run(train_args(data, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-12", "step-3", "step-6", "step-9"]
    return out


def assert_same_losses(out: Path, reference: Path) -> None:
    ref, got = losses(reference), losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s] == ref[s], f"step {s}: {got[s]} != {ref[s]}"


def rank_process(top: psutil.Process, rank: int) -> psutil.Process | None:
    for p in top.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if "baichuan.train" in cmd and "deepspeed.launcher" not in cmd and p.environ().get("RANK") == str(rank):
                return p
        except psutil.Error:
            continue
    return None


# ----------------------------------------------------------------------------- §1 restarts
def test_sigkill_of_a_rank_restarts_from_the_checkpoint_with_the_same_losses(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    log_path = tmp_path / "log"
    p = subprocess.Popen(train_args(data, out, "--max-restarts", "2"), stdout=open(log_path, "w"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:  # past the first checkpoint
            got = losses(out) if (out / "metrics.jsonl").is_file() else {}
            if (out / "checkpoints" / "latest").is_file() and max(got, default=0) >= SAVE + 1:
                break
            assert p.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        victim = rank_process(psutil.Process(p.pid), 1)
        assert victim is not None
        killed_at = time.time()
        victim.send_signal(signal.SIGKILL)  # the rank only, not the launcher
        assert p.wait(timeout=300) == 0, log_path.read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert_same_losses(out, reference)
    (rec,) = restarts(out)
    assert rec["restart"] == 1 and rec["first_new_step"] == rec["checkpoint_step"] + 1
    assert rec["steps_lost"] == rec["last_logged_step"] - rec["checkpoint_step"] >= 0
    assert "a rank" in rec["cause"], rec["cause"]
    recovered = rec["first_step_unix"] - killed_at
    print(f"\nkill -> first new step: {recovered:.1f} s (launcher saw the failure -> first step: "
          f"{rec['seconds_to_first_step']:.1f} s; {rec['steps_lost']} step(s) lost)")
    assert 0 < recovered < 200
    text = log_path.read_text()
    assert "Traceback" not in text  # the survivor's broken collective is one line, not a traceback
    line = next(x for x in ours(text) if "restart 1/2" in x)
    assert f"restart 1/2 from {out / 'checkpoints' / rec['resumed_from']}" in line


def test_a_failure_that_repeats_gives_up_after_max_restarts(data: Path, tmp_path: Path) -> None:
    """Rank 1 SIGKILLs itself at step 5 in every launch: one restart, then a clear one-line stop."""
    out = tmp_path / "run"
    r = run(train_args(data, out, "--max-restarts", "1", "--debug-fault", "kill:1:5"))
    assert r.returncode != 0
    (line,) = [x for x in ours(r.stderr) if x.startswith("baichuan train: error:")]
    assert line.startswith("baichuan train: error: giving up after 1 restart(s): a rank ")
    assert "the last 2 launches all failed at step 5: the failure repeats" in line
    assert f"see {out / 'restarts.jsonl'}" in line
    (rec,) = restarts(out)
    assert rec["checkpoint_step"] == 3 and rec["first_new_step"] == 4 and rec["last_logged_step"] == 4
    assert max(losses(out)) == 4


# --------------------------------------------------------------------------------- §2 hangs
def test_a_stalled_rank_is_detected_its_stacks_dumped_and_the_job_restarted(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    r = run(train_args(data, out, "--max-restarts", "1", "--hang-timeout", "4", "--debug-fault", "stall:1:5:1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_losses(out, reference)
    stacks = {}
    for rank in (0, 1):
        (path,) = (out / "faults").glob(f"hang-*-attempt0-rank{rank}.txt")
        stacks[rank] = path.read_text()
    assert "in at_step_start" in stacks[1]  # where rank 1 stalls
    assert "Thread" in stacks[0] and "_run" in stacks[0]  # rank 0 waits in the step's first collective
    for rank, text in stacks.items():
        assert text.startswith(f"rank {rank}: no step completed for ") and "limit 4.0 s: --hang-timeout" in text
    (rec,) = restarts(out)
    assert rec["exit_status"] == 75 and rec["hung_ranks"] == [0, 1] and "hung (watchdog" in rec["cause"]
    assert rec["checkpoint_step"] == 3 and rec["first_new_step"] == 4


# ----------------------------------------------------------------------- §3 damaged checkpoints
def damage(step_dir: Path, how: str) -> Path:
    victim = {"truncate": "zero_pp_rank_1_mp_rank_00_optim_states.pt", "delete": "trainer_state_rank00001.json",
              "flip": "model/model.safetensors"}[how]
    f = step_dir / victim
    if how == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "delete":
        f.unlink()
    else:
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        b[len(b) // 2 + 1] ^= 0xFF
        f.write_bytes(bytes(b))
    return f


@pytest.mark.parametrize("how", ["truncate", "delete", "flip"])
def test_choose_checkpoint_skips_a_damaged_newest(reference: Path, tmp_path: Path, how: str) -> None:
    from baichuan.faults import choose_checkpoint

    ck = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ck)
    assert choose_checkpoint(ck, pytest.fail) == "step-12"
    bad = damage(ck / "step-12", how)
    warnings: list[str] = []
    assert choose_checkpoint(ck, warnings.append) == "step-9"
    (w,) = warnings
    assert w.startswith(f"baichuan train: warning: checkpoint {ck / 'step-12'} is damaged or incomplete: {bad}")
    assert w.endswith(f"moved to {ck / 'damaged-step-12'}, resuming from {ck / 'step-9'}")
    assert (ck / "latest").read_text().strip() == "step-9" and (ck / "damaged-step-12").is_dir()


def test_resume_falls_back_past_damaged_checkpoints_to_the_same_losses(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    """Newest three checkpoints damaged three ways: --resume starts from step-3 and ends with the
    reference losses; each warning names the bad file."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    ck = out / "checkpoints"
    bad = {12: damage(ck / "step-12", "truncate"), 9: damage(ck / "step-9", "delete"), 6: damage(ck / "step-6", "flip")}
    r = run([*train_args(data, out), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [x for x in ours(r.stderr) if "warning" in x]
    assert len(warnings) == 3
    for step, f in bad.items():
        assert any(f"{ck / f'step-{step}'} is damaged or incomplete: {f}" in w for w in warnings), (step, warnings)
    assert f"resumed from {ck / 'step-3'} at step 3" in r.stderr
    assert_same_losses(out, reference)


@pytest.mark.skipif(not SPM.is_file(), reason="../shared tokenizer not found")
def test_generate_and_export_refuse_a_changed_weights_file(reference: Path, tmp_path: Path) -> None:
    ck = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ck)
    bad = damage(ck / "step-12", "flip")
    for args in (["export-hf", "--checkpoint", str(ck), "--output", str(tmp_path / "hf"), "--tokenizer", str(SPM)],
                 ["generate", "--model", str(ck / "step-12" / "model"), "--max-new-tokens", "2", "--device", "cpu",
                  "--tokenizer", str(SPM), "hi"]):
        r = run([sys.executable, "-m", "baichuan", *args], timeout=120)
        assert r.returncode != 0
        (line,) = r.stderr.strip().splitlines()[-1:]
        assert str(bad) in line and "has changed since the checkpoint was saved" in line, line


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint_and_stops(data: Path, tmp_path: Path) -> None:
    """ENOSPC injected into rank 0's save of step 6 (--debug-fault write-error): one clear line, exit 2,
    no restart (the same write would fail again), `latest` and step-3 intact and verified."""
    from baichuan.checkpoint import manifest_problems

    out = tmp_path / "run"
    r = run(train_args(data, out, "--max-restarts", "2", "--debug-fault", "write-error:0:6"))
    assert r.returncode == 2
    ck = out / "checkpoints"
    errors = [x for x in ours(r.stderr) if x.startswith("baichuan train: error:")]
    assert errors == [
        f"baichuan train: error: checkpoint {ck / 'step-6'} could not be written on rank 0 (No space left on device "
        f"(--debug-fault): {ck / 'step-6'}); {ck / 'latest'} still names the previous complete checkpoint {ck / 'step-3'}"
    ]
    assert (ck / "latest").read_text().strip() == "step-3"
    assert manifest_problems(ck / "step-3") == []
    assert not (out / "restarts.jsonl").exists()


# --------------------------------------------------------------------- the launcher loop alone
DRIVER = r"""
import sys, baichuan.launch as L
from baichuan.train_config import TrainConfig
stand_in, out, restarts = sys.argv[1], sys.argv[2], int(sys.argv[3])
L.deepspeed_command = lambda *a, **k: [sys.executable, "-c", stand_in, out]
cfg = TrainConfig(data=out, output_dir=out + "/run", max_restarts=restarts)
sys.exit(L.launch(cfg, num_procs=2))
"""
FAILS = "import sys, pathlib; p = pathlib.Path(sys.argv[1]) / 'launches'; p.open('a').write('x'); sys.exit(1)"
SLEEPS = ("import sys, time, pathlib; p = pathlib.Path(sys.argv[1]) / 'launches'; p.open('a').write('x'); "
          "print('ready', flush=True); time.sleep(600)")


def test_launcher_gives_up_after_max_restarts(tmp_path: Path) -> None:
    old = tmp_path / "run" / "faults" / "error-20260101T000000Z-attempt0-rank0.txt"  # an earlier invocation's
    old.parent.mkdir(parents=True)
    old.write_text("baichuan train: error: something earlier\n")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    r = run([sys.executable, "-c", DRIVER, FAILS, str(tmp_path), "3"], timeout=60)
    assert r.returncode == 1
    assert (tmp_path / "launches").read_text() == "xxxx"  # the first launch and 3 restarts
    assert [x.split(";")[0] for x in ours(r.stderr)] == [
        *("baichuan train: a rank exited with status 1 after step 0" for _ in range(3)),
        "baichuan train: error: giving up after 3 restart(s): a rank exited with status 1",
    ]
    assert "the last 4 launches all failed at step 1: the failure repeats" in r.stderr
    recs = restarts(tmp_path / "run")
    assert [x["restart"] for x in recs] == [1, 2, 3] and all(x["first_new_step"] is None for x in recs)


def test_sigterm_is_never_restarted(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", DRIVER, SLEEPS, str(tmp_path), "3"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert (tmp_path / "launches").read_text() == "x"
    err = p.stderr.read() if p.stderr else ""
    assert ours(err) == [
        "baichuan train: stopped by SIGTERM; all ranks ended; no checkpoint was completed; "
        f"continue with --resume (--output-dir {tmp_path / 'run'})"
    ]


# ------------------------------------------------------- issue 12 §4: two nodes on one machine
REPO = Path(__file__).resolve().parents[1]


def start_nodes(data: Path, out: Path, hostfile: Path, logs: Path, *extra: str) -> list[subprocess.Popen]:
    """The documented no-ssh recipe (docs/training.md): on every node `scripts/train.sh` with the
    same hostfile and --master-port, DS_LAUNCH_ARGS="--no_ssh --node_rank N --master_addr NODE0"."""
    from baichuan.launch import free_port

    port = free_port()
    args = train_args(data, out, *extra)
    assert args[3:6] == ["train", "--num-procs", "2"]
    nodes = []
    for n in (0, 1):
        env = {**os.environ, "HOSTFILE": str(hostfile), "PYTHON": sys.executable,
               "DS_LAUNCH_ARGS": f"--no_ssh --node_rank {n} --master_addr 127.0.0.1"}
        nodes.append(subprocess.Popen(["bash", str(REPO / "scripts" / "train.sh"), *args[6:], "--master-port", str(port)],
                                      env=env, stdout=open(logs / f"node{n}.log", "a"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
    return nodes


def test_two_nodes_without_ssh_restart_and_resume_as_one_node(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    """Two DeepSpeed launchers (`--no_ssh --node_rank 0/1`, a hostfile of two hosts with one slot
    each), one per simulated node, sharing the run directory. Rank 1 (node 1) SIGKILLs itself at
    step 5: both nodes' launchers restart by themselves (same --master-port) from step-3; then every
    process is SIGKILLed after the checkpoint at step 9 and both nodes are resumed with --resume.
    The losses equal the one-node 2-rank run's."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    out = tmp_path / "run"
    nodes = start_nodes(data, out, hostfile, tmp_path, "--max-restarts", "1", "--debug-fault", "kill:1:5:1")
    try:
        deadline = time.monotonic() + 300
        while True:
            got = losses(out) if (out / "metrics.jsonl").is_file() else {}
            if (out / "checkpoints" / "step-9" / "files.sha256.json").is_file() and max(got, default=0) >= 10:
                break
            assert all(p.poll() is None for p in nodes), (tmp_path / "node0.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for p in nodes:
            kill_tree(p)
    assert (out / "checkpoints" / "latest").read_text().strip() in ("step-9", "step-12")
    (rec,) = restarts(out)
    assert rec["resumed_from"] == "step-3" and rec["first_new_step"] == 4
    for n in (0, 1):
        assert "restart 1/1 from" in (tmp_path / f"node{n}.log").read_text()
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    nodes = start_nodes(data, out, hostfile, tmp_path, "--resume")
    try:
        assert [p.wait(timeout=300) for p in nodes] == [0, 0], (tmp_path / "node0.log").read_text()[-3000:]
    finally:
        for p in nodes:
            if p.poll() is None:
                kill_tree(p)
    assert "resumed from" in (tmp_path / "node0.log").read_text()
    assert_same_losses(out, reference)


# --------------------------------------------------------------------------- small pieces
def test_watchdog_limit_is_ten_median_steps_with_a_floor(tmp_path: Path) -> None:
    from baichuan.faults import HANG_FLOOR_S, Watchdog

    w = Watchdog(tmp_path, rank=0, attempt=0, hang_timeout=None)
    assert w.limit() == HANG_FLOOR_S == 300
    for t in (1.0, 50.0, 40.0, 45.0, 2000.0):
        w.step_done(1, t)
    assert w.limit() == 450.0  # 10 x median 45 s
    assert Watchdog(tmp_path, 0, 0, hang_timeout=7.5).limit() == 7.5
    assert not Watchdog(tmp_path, 0, 0, hang_timeout=0).enabled


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--max-restarts", "-1", "--max-restarts must be >= 0, got -1"),
    ("--hang-timeout", "-5", "--hang-timeout must be >= 0, got -5"),
    ("--collective-timeout", "0", "--collective-timeout must be > 0, got 0"),
    ("--debug-fault", "explode:1:2", "--debug-fault: expected kill|stall|write-error:RANK:STEP[:ATTEMPTS]"),
])
def test_fault_flags_are_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    from baichuan.cli import main

    rc = main(["train", "--data", str(tmp_path), "--output-dir", str(tmp_path / "run"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [f"baichuan train: error: {err.split('error: ', 1)[1].strip()}"]
    assert message in err
    assert not (tmp_path / "run").exists()


def test_a_runs_train_config_json_does_not_carry_launch_state(tmp_path: Path) -> None:
    import argparse

    from baichuan.commands.train import add_arguments, config_from_args
    from baichuan.train_config import TrainConfig

    cfg = TrainConfig(data="d", resume_tag="step-3", attempt=2, restart={"restart": 2}, max_restarts=3)
    cfg.to_json_file(tmp_path / "train_config.json")
    p = argparse.ArgumentParser()
    add_arguments(p)
    got = config_from_args(p.parse_args(["--config", str(tmp_path / "train_config.json")]))
    assert (got.resume_tag, got.attempt, got.restart, got.max_restarts) == (None, 0, None, 3)


def test_one_process_run_with_max_restarts_goes_through_the_launcher(data: Path, tmp_path: Path) -> None:
    """Without --num-procs, --max-restarts runs the one rank under DeepSpeed's launcher so that it
    can be relaunched: the rank SIGKILLs itself at step 5 of the first launch, the run finishes."""
    out = tmp_path / "run"
    args = train_args(data, out, "--max-restarts", "1", "--debug-fault", "kill:0:5:1", "--steps", "6")
    del args[args.index("--num-procs"):args.index("--num-procs") + 2]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 rank(s) on cpu" in r.stderr
    (rec,) = restarts(out)
    assert rec["resumed_from"] == "step-3" and rec["first_new_step"] == 4
    assert "killed by SIGKILL" in rec["cause"], rec["cause"]  # one rank: the launcher reports its status
    assert sorted(losses(out)) == list(range(1, 7))


def test_resume_with_latest_naming_a_deleted_checkpoint_uses_the_newest_complete_one(
    reference: Path, tmp_path: Path
) -> None:
    from baichuan.faults import choose_checkpoint

    ck = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ck)
    shutil.rmtree(ck / "step-12")
    warnings: list[str] = []
    assert choose_checkpoint(ck, warnings.append) == "step-9"
    assert warnings == [
        f"baichuan train: warning: {ck / 'latest'} names step-12, which is missing; resuming from {ck / 'step-9'}"
    ]
    (ck / "latest").unlink()
    assert choose_checkpoint(ck, warnings.append) == "step-9"
    assert warnings[-1] == f"baichuan train: warning: {ck / 'latest'} is missing; resuming from {ck / 'step-9'}"
