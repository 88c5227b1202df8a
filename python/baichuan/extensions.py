"""What a rank and the launcher share, without importing each other: a free local port, and the
folder of torch/DeepSpeed compiled extensions of this Python environment (DeepSpeed compiles a CPU
communication extension on its first CPU launch; a line says so before the build starts)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
from pathlib import Path
from typing import TextIO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SHM_EXTENSION = "deepspeed_shm_comm"  # DeepSpeed's CPU communication op (ShareMemCommBuilder)


def extensions_dir() -> Path:
    """Where this Python environment keeps torch/DeepSpeed compiled extensions: under the
    environment (``sys.prefix``) when writable, else a per-environment folder of the user cache
    keyed by ``sys.prefix``; so two environments on one machine never rebuild in turn."""
    prefix = Path(sys.prefix)
    if os.access(prefix, os.W_OK):
        return prefix / "var" / "baichuan" / "torch_extensions"
    key = hashlib.sha256(str(prefix.resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "baichuan" / "torch_extensions" / f"{prefix.name}-{key}"


def use_environment_extensions_dir() -> Path:
    """Set ``TORCH_EXTENSIONS_DIR`` to :func:`extensions_dir` unless the user set it; return it."""
    return Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir())))


def announce_extension_build(stream: TextIO | None = None) -> bool:
    """Print one line when DeepSpeed's CPU extension is not built yet in this environment (its first
    CPU launch compiles it for a minute or more with no output). Returns whether it printed."""
    root = use_environment_extensions_dir()
    built = root / SHM_EXTENSION / f"{SHM_EXTENSION}.so"
    if built.is_file():
        return False
    try:
        import deepspeed.ops

        if not deepspeed.ops.__compatible_ops__.get(SHM_EXTENSION, False):
            return False  # DeepSpeed will not build it here
    except (ImportError, AttributeError):
        pass
    print(
        f"DeepSpeed compiles its CPU communication extension ({SHM_EXTENSION}) into {root} once for this "
        "environment: about 1-2 minutes with no output, later runs reuse it",
        file=stream or sys.stderr, flush=True,
    )
    return True


# DeepSpeed's CPU all-reduce (deepspeed_shm_comm, used when every rank is on one machine) creates
# one shared-memory file per rank, /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>
# (csrc/cpu/comm/shm.cpp, shm_initialize), and deepspeed 0.19.8 never unlinks it, not even on a
# normal exit: each 2-rank CPU run left 2 x 66 MiB in /dev/shm until reboot, and a full /dev/shm
# makes later launches hang at start-up. The launcher removes its own launch's files once all its
# ranks have ended.
SHM_DIR = Path("/dev/shm")
SHM_BUFFER_PREFIX = "deepspeed_allreduce_buffer_"


def shm_buffers(port: int, shm_dir: Path = SHM_DIR) -> list[Path]:
    """This user's DeepSpeed all-reduce buffers of the job whose master port is ``port``. The port
    identifies the job: no other job on this machine can hold it while the job runs, and the
    buffers exist only when all ranks run on this one machine, so under one launcher."""
    pattern = re.compile(rf"{SHM_BUFFER_PREFIX}{os.getuid()}_[^/]+_{port}_\d+")
    try:
        names = os.listdir(shm_dir)
    except OSError:  # no /dev/shm on this system
        return []
    return [shm_dir / n for n in sorted(names) if pattern.fullmatch(n)]


def remove_shm_buffers(port: int, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Unlink :func:`shm_buffers` (call only after every rank of that job has ended); returns them.
    A file that is gone already or that cannot be removed is skipped: this is hygiene, not a step
    the run depends on."""
    removed = []
    for p in shm_buffers(port, shm_dir):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
