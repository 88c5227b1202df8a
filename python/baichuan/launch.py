"""Starting training ranks through DeepSpeed's launcher.

``launch(cfg, num_procs=2)`` writes the :class:`TrainConfig` to ``<output_dir>/train_config.json``
and runs ``deepspeed [--hostfile H | --num_gpus N] --no_local_rank --module baichuan.train --config
that.json``: one process per rank (on a CPU-only machine each rank is a CPU process talking gloo).
``baichuan train --num-procs N`` and ``scripts/train.sh`` go through here; a process started by a
launcher (``RANK`` set) runs :func:`baichuan.train.run_training` directly instead.
"""

from __future__ import annotations

from baichuan.errors import BaichuanError

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deepspeed_command(
    config_json: str | os.PathLike[str],
    num_procs: int | None = None,
    hostfile: str | os.PathLike[str] | None = None,
    master_port: int | None = None,
) -> list[str]:
    # The runner starts ranks with its own interpreter: run it with ours (a venv's python finds this package).
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile is not None:
        cmd += ["--hostfile", str(hostfile), *local_only_args(parse_hostfile(hostfile))]
        if num_procs is not None:
            cmd += ["--num_gpus", str(num_procs)]
    else:
        cmd += ["--num_gpus", str(num_procs or 1)]
    cmd += ["--master_port", str(master_port or free_port()), "--no_local_rank"]
    cmd += ["--module", "baichuan.train", "--config", str(config_json)]
    return cmd


def launch(
    cfg: TrainConfig,
    num_procs: int | None = 1,
    hostfile: str | os.PathLike[str] | None = None,
    master_port: int | None = None,
) -> int:
    """Run ``cfg`` on ``num_procs`` local ranks (or the hosts of ``hostfile``); returns the exit status.

    Output of the ranks streams to this process's stdout/stderr (rank 0 shows the progress bar).
    """
    cfg.validate()
    if num_procs is not None and num_procs <= 0:
        raise LaunchError(f"num_procs must be positive, got {num_procs}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "train_config.json"
    cfg.to_json_file(cfg_path)
    cmd = deepspeed_command(cfg_path.resolve(), num_procs, hostfile, master_port)
    env = dict(os.environ)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.call(cmd, env=env)
