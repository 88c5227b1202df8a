"""Starting training ranks through DeepSpeed's launcher.

``launch(cfg, num_procs=2)`` writes the :class:`TrainConfig` to ``<output_dir>/train_config.json``
and runs ``deepspeed [--hostfile H | --num_gpus N] --no_local_rank --module baichuan.train --config
that.json``: one process per rank (on a CPU-only machine each rank is a CPU process talking gloo).
``baichuan train --num-procs N`` and ``scripts/train.sh`` go through here; a process started by a
launcher (``RANK`` set) runs :func:`baichuan.train.run_training` directly instead.

Signals: the launcher and its ranks run in their own session (process group). SIGTERM or SIGINT
(Ctrl-C) to this process is forwarded to that whole group as SIGTERM; after a grace period what is
left gets SIGKILL. The ranks are never left behind, the last complete checkpoint stays valid
(``checkpoints/latest`` is only moved after a complete save), one line says where to resume, and
the exit status is 143 (SIGTERM) or 130 (SIGINT).

DeepSpeed compiles a CPU communication extension on its first CPU launch; it is kept per Python
environment (``TORCH_EXTENSIONS_DIR``, unless set, is a folder of this environment: see
:func:`extensions_dir`) and a line says so before the build starts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from baichuan.errors import BaichuanError
from baichuan.extensions import (  # noqa: F401 - their home was here
    SHM_EXTENSION,
    announce_extension_build,
    extensions_dir,
    free_port,
    remove_shm_buffers,
    use_environment_extensions_dir,
)
from baichuan.train_config import TrainConfig

_HOST_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-\[\]:]+)\s+slots\s*=\s*(?P<slots>\d+)\s*$")


class LaunchError(BaichuanError, ValueError):
    """The launch cannot start (bad hostfile, no deepspeed launcher)."""


def parse_hostfile(path: str | os.PathLike[str]) -> dict[str, int]:
    """``host slots=N`` lines (``#`` comments, blank lines allowed) -> {host: slots}."""
    p = Path(path)
    if not p.exists():
        raise LaunchError(f"hostfile not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LaunchError(f"hostfile {p} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    hosts: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _HOST_LINE.match(line)
        if not m:
            raise LaunchError(f"{p}:{n}: expected 'HOSTNAME slots=N', got {raw.strip()!r}")
        host, slots = m.group("host"), int(m.group("slots"))
        if slots <= 0:
            raise LaunchError(f"{p}:{n}: slots must be positive")
        if host in hosts:
            raise LaunchError(f"{p}:{n}: host {host} listed twice")
        hosts[host] = slots
    if not hosts:
        raise LaunchError(f"hostfile {p} lists no hosts")
    return hosts


LOCAL_HOSTS = ("localhost", "127.0.0.1")


def local_only_args(hosts: dict[str, int]) -> list[str]:
    """Launcher flags for a hostfile that names only this machine: DeepSpeed would otherwise
    insist on passwordless ssh to ``localhost`` and ask it for its address."""
    if set(hosts) <= set(LOCAL_HOSTS):
        return ["--no_ssh_check", "--master_addr", "127.0.0.1"]
    return []


def deepspeed_command(
    config_json: str | os.PathLike[str],
    num_procs: int | None = None,
    hostfile: str | os.PathLike[str] | None = None,
    master_port: int | None = None,
    launcher_args: Sequence[str] = (),
) -> list[str]:
    # The runner starts ranks with its own interpreter: run it with ours (a venv's python finds this package).
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", *launcher_args]
    if hostfile is not None:
        cmd += ["--hostfile", str(hostfile), *local_only_args(parse_hostfile(hostfile))]
        if num_procs is not None:
            cmd += ["--num_gpus", str(num_procs)]
    else:
        cmd += ["--num_gpus", str(num_procs or 1)]
    # --log_level warning: no INFO lines from DeepSpeed's launchers (commands, "Killing subprocess").
    cmd += ["--master_port", str(master_port or free_port()), "--log_level", "warning", "--no_local_rank"]
    cmd += ["--module", "baichuan.train", "--config", str(config_json)]
    return cmd


def launch(
    cfg: TrainConfig,
    num_procs: int | None = 1,
    hostfile: str | os.PathLike[str] | None = None,
    master_port: int | None = None,
    grace_s: float = 10.0,
    launcher_args: Sequence[str] = (),
) -> int:
    """Run ``cfg`` on ``num_procs`` local ranks (or the hosts of ``hostfile``); returns the exit status.

    The run directory is checked and prepared here first (``baichuan.train.prepare_run_dir``: a
    previous run needs ``resume`` or ``overwrite``). Output of the ranks streams to this process's
    stdout/stderr (rank 0 shows the progress bar). ``launcher_args`` go to DeepSpeed's runner
    (``scripts/train.sh``'s ``DS_LAUNCH_ARGS``, e.g. ``--force_multi``). See the module docstring
    for signals."""
    from baichuan.train import prepare_run_dir

    cfg.validate()
    if num_procs is not None and num_procs <= 0:
        raise LaunchError(f"num_procs must be positive, got {num_procs}")
    if hostfile is not None:
        parse_hostfile(hostfile)
    prepare_run_dir(cfg)
    env = dict(os.environ)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    with _Signals() as received:
        return _launch_loop(cfg, num_procs, hostfile, master_port, grace_s, launcher_args, env, received)


def _launch_loop(
    cfg: TrainConfig, num_procs: int | None, hostfile: str | os.PathLike[str] | None, master_port: int | None,
    grace_s: float, launcher_args: Sequence[str], env: dict[str, str], received: list[int],
) -> int:
    """Launch; after a failure (not a user's signal, not a rank's clear error) relaunch with
    ``--resume`` from the newest verified checkpoint, up to ``cfg.max_restarts`` times (module docstring)."""
    import dataclasses

    from baichuan import faults
    from baichuan.checkpoint import CheckpointError
    from baichuan.train import checkpoint_dir

    out = Path(cfg.output_dir)
    cfg_path = out / "train_config.json"
    restart: dict | None = None
    failed_steps: list[int] = []
    attempt = 0
    tag_now: str | None = None
    while True:
        if received:  # a signal between two launches
            return _stopped_by_signal(received, cfg)
        rank_cfg = cfg.for_ranks()
        if attempt:
            tag = tag_now  # verified after the failure, below
        if cfg.resume and not attempt:
            try:
                tag = faults.choose_checkpoint(checkpoint_dir(cfg), lambda line: print(line, file=sys.stderr, flush=True))
            except CheckpointError as e:
                print(f"baichuan train: error: {e}", file=sys.stderr, flush=True)
                return 2
        if cfg.resume or attempt:
            rank_cfg = dataclasses.replace(rank_cfg, resume=True, resume_tag=tag, attempt=attempt, restart=restart)
        tmp = cfg_path.with_name(f".{cfg_path.name}.{os.getpid()}.tmp")  # atomic: a launcher per node may write it
        rank_cfg.to_json_file(tmp)
        os.replace(tmp, cfg_path)
        port = master_port or free_port()  # a fresh port per launch: the old one may linger in TIME_WAIT
        cmd = deepspeed_command(cfg_path.resolve(), num_procs, hostfile, port, launcher_args)
        started = time.time()
        status = _run_once(cmd, env, grace_s, received)  # returns when the launcher's whole group has ended
        remove_shm_buffers(port)
        if received:
            return _stopped_by_signal(received, cfg)
        if status == 0:
            return 0
        detected = time.time()
        found = faults.attempt_faults(out, attempt, since=started)
        last_step, last_step_unix = faults.last_logged_step(out)
        if restart is not None and not any(r.get("restart") == restart["restart"] for r in faults.read_records(out)):
            faults.append_record(out, {**restart, "first_new_step": None,
                                       "outcome": "the relaunched job failed before its first step"})
        if found["error"]:  # the rank printed its one-line error: a relaunch would fail the same way
            return 2  # (the launcher may report another rank's status: the collective it was in broke)
        if found["hang"]:
            ranks = sorted(found["hang"])
            cause = (f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} hung (watchdog, "
                     f"stacks in {faults.faults_dir(out)}/hang-*-attempt{attempt}-rank*.txt)")
        else:
            cause = faults.describe_status(status)
        failed_steps.append(last_step + 1)
        if attempt >= cfg.max_restarts:
            if cfg.max_restarts:
                same = sum(1 for _ in _takewhile_equal(failed_steps))
                repeat = (f"; the last {same} launches all failed at step {failed_steps[-1]}: the failure repeats"
                          if same > 1 else "")
                print(f"baichuan train: error: giving up after {cfg.max_restarts} restart(s): {cause}{repeat}; "
                      f"see {out / faults.RESTARTS_LOG}; {_interrupted_line(cfg)}", file=sys.stderr, flush=True)
            return status
        attempt += 1
        try:
            tag_now = faults.choose_checkpoint(checkpoint_dir(cfg), lambda line: print(line, file=sys.stderr, flush=True))
        except CheckpointError as e:
            print(f"baichuan train: error: {cause}, and {e}", file=sys.stderr, flush=True)
            return status
        ckpt_step = int(tag_now.split("-", 1)[1]) if tag_now and tag_now.startswith("step-") else 0
        restart = {
            "restart": attempt, "max_restarts": cfg.max_restarts, "cause": cause, "exit_status": status,
            "hung_ranks": sorted(found["hang"]), "detected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(detected)),
            "detected_unix": detected, "last_logged_step": last_step, "last_step_unix": last_step_unix,
            "resumed_from": tag_now, "checkpoint_step": ckpt_step, "steps_lost": max(0, last_step - ckpt_step),
        }
        where = f"{checkpoint_dir(cfg) / tag_now}" if tag_now else "step 0 (no checkpoint yet)"
        print(f"baichuan train: {cause} after step {last_step}; restart {attempt}/{cfg.max_restarts} from {where} "
              f"({restart['steps_lost']} step(s) lost)", file=sys.stderr, flush=True)


def _takewhile_equal(xs: list[int]):
    for x in reversed(xs):
        if x != xs[-1]:
            return
        yield x


def _interrupted_line(cfg: TrainConfig) -> str:
    from baichuan.train import _interrupted_line as line

    return line(cfg)


# ----------------------------------------------------------------------------- process group
_SIGNAL_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}


class _Signals:
    """SIGTERM/SIGINT handlers for the whole launch (every relaunch included): the signals received
    are recorded and forwarded to the running launcher's process group (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.group: list[int] = []
        self.old: dict = {}

    def _forward(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        if self.group:
            _signal_group(self.group[-1], signal.SIGTERM if len(self.received) == 1 else signal.SIGKILL)

    def __enter__(self) -> list[int]:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self.old = {s: signal.signal(s, self._forward) for s in _SIGNAL_STATUS}
        _ACTIVE.append(self)
        return self.received

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.remove(self)
        for s, h in self.old.items():
            signal.signal(s, h)


_ACTIVE: list[_Signals] = []


def _run_group(cmd: list[str], env: dict[str, str], cfg: TrainConfig, grace_s: float) -> int:
    """Run ``cmd`` in a new session; forward SIGTERM/SIGINT to its whole process group."""
    with _Signals() as received:
        status = _run_once(cmd, env, grace_s, received)
        return _stopped_by_signal(received, cfg) if received else status


def _run_once(cmd: list[str], env: dict[str, str], grace_s: float, received: list[int]) -> int:
    """One launcher process in a session of its own (inside a ``_Signals`` block); what it leaves
    behind is stopped when it ends."""
    sig = next(s for s in _ACTIVE if s.received is received)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    sig.group.append(proc.pid)
    if received:  # a signal came while it was starting
        _signal_group(proc.pid, signal.SIGTERM)
    try:
        return proc.wait()
    finally:
        if received or _group_alive(proc.pid):  # stopped, or the launcher left something behind
            _stop_group(proc.pid, grace_s)


def _stopped_by_signal(received: list[int], cfg: TrainConfig) -> int:
    name = signal.Signals(received[0]).name
    print(f"baichuan train: stopped by {name}; all ranks ended; {_interrupted_line(cfg)}", file=sys.stderr, flush=True)
    return _SIGNAL_STATUS[signal.Signals(received[0])]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies waiting for a reaper do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, wait up to ``grace_s`` for it to end, then SIGKILL what is left."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
