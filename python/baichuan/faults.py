"""Failures of a training job: which checkpoint to resume from, the hang watchdog, restart records.

docs/training.md ("Failures and recovery") is the user's view. In short:

* :func:`choose_checkpoint` picks the checkpoint a resume loads: ``checkpoints/latest`` when every
  file matches its ``files.sha256.json`` (``baichuan.checkpoint``), else the newest older
  ``step-N`` that does, with a warning naming the bad file; the damaged folders newer than it are
  renamed ``damaged-step-N`` (kept for a post-mortem, never resumed from or saved into) and
  ``latest`` is rewritten to name the one chosen. With no complete checkpoint it refuses.
* :class:`Watchdog` (one thread per rank): once a step has completed, when no further step
  completes within the limit (``--hang-timeout`` seconds, or 10x the median step time and at least
  :data:`HANG_FLOOR_S`), it writes the rank's Python stacks (all threads) to
  ``OUTPUT/faults/hang-{UTC time}-attempt{A}-rank{R}.txt`` and ends the process with :data:`HANG_EXIT`, so
  that the launcher sees a failure (and ``--max-restarts`` relaunches). Checkpoint saves pause it.
* A rank that stops with a clear error (bad input, divergence, a failed checkpoint write: exit
  status 2) records it in ``OUTPUT/faults/error-{UTC time}-attempt{A}-rank{R}.txt``: such a failure
  repeats, so the launcher does not relaunch it. The launcher only counts the files written since
  it started that launch (an earlier invocation's files stay, for a post-mortem).
* ``OUTPUT/restarts.jsonl``: one JSON line per restart (``baichuan.launch``), completed by rank 0 of
  the relaunched job at its first step (:func:`log_recovered`).
* :class:`DebugFault`: the hidden ``--debug-fault KIND:RANK:STEP[:ATTEMPTS]`` of the tests.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The watchdog's automatic limit is defined beside TrainConfig, whose --hang-timeout help shows it.
from baichuan.train_config import HANG_FACTOR, HANG_FLOOR_S

HANG_EXIT = 75  # EX_TEMPFAIL: the watchdog ended a rank that made no progress
FAULTS_DIR = "faults"
RESTARTS_LOG = "restarts.jsonl"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def faults_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / FAULTS_DIR


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# ------------------------------------------------------------------------- which checkpoint
def step_tags(ckpt_dir: Path) -> list[tuple[int, str]]:
    """``(N, "step-N")`` of the folders in ``ckpt_dir``, newest first."""
    out = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p.name))
    return sorted(out, reverse=True)


def _problems(folder: Path) -> list[str]:
    from baichuan.checkpoint import CheckpointError, manifest_problems

    try:
        return manifest_problems(folder)
    except CheckpointError as e:  # no (readable) files.sha256.json: not a complete checkpoint
        return [str(e)]
    except OSError as e:
        return [f"{folder}: cannot be read ({e})"]


def _summary(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def choose_checkpoint(ckpt_dir: str | os.PathLike[str], warn: Callable[[str], None]) -> str | None:
    """The tag a resume loads (see the module docstring); None when there is no checkpoint yet.
    Raises ``CheckpointError`` naming the bad file when no checkpoint is complete."""
    from baichuan.checkpoint import CheckpointError

    d = Path(ckpt_dir)
    latest_file = d / "latest"
    latest: str | None = None
    latest_note = ""
    if latest_file.is_file():
        latest = latest_file.read_text(encoding="utf-8", errors="replace").strip()
        if not latest or "/" in latest or "\\" in latest or latest.startswith("."):
            latest_note, latest = f"{latest_file} does not name a checkpoint ({latest[:40]!r})", None
        elif not (d / latest).is_dir():
            latest_note, latest = f"{latest_file} names {latest}, which is missing", None
    tags = step_tags(d)
    if latest is None and not latest_note and not latest_file.exists():
        if not tags:
            return None
        latest_note = f"{latest_file} is missing"
    if latest is not None:
        m = _STEP_DIR.match(latest)
        newest = int(m.group(1)) if m else None
        candidates = [latest] + [t for n, t in tags if newest is not None and n < newest]
    else:
        candidates = [t for _, t in tags]
    bad: list[tuple[str, str]] = []
    if latest_note:
        bad.append(("", latest_note))
    for tag in candidates:
        problems = _problems(d / tag)
        if problems:
            bad.append((tag, _summary(problems)))
            continue
        for bad_tag, why in bad:
            if bad_tag:
                aside = _move_aside(d, bad_tag)
                warn(f"baichuan train: warning: checkpoint {d / bad_tag} is damaged or incomplete: {why}; "
                     f"moved to {aside}, resuming from {d / tag}")
            else:
                warn(f"baichuan train: warning: {why}; resuming from {d / tag}")
        if tag != latest:
            tmp = d / f"latest.{os.getpid()}.tmp"  # per process: each node's launcher may do this (--no_ssh)
            tmp.write_text(tag + "\n", encoding="utf-8")
            os.replace(tmp, latest_file)
        return tag
    if not bad:
        return None
    raise CheckpointError(f"cannot resume: {bad[0][1]}; and no earlier complete checkpoint in {d}"
                          if len(bad) == 1 else
                          f"cannot resume: no complete checkpoint in {d} ({'; '.join(why for _, why in bad[:3])})")


def _move_aside(d: Path, tag: str) -> Path:
    dst = d / f"damaged-{tag}"
    n = 1
    while dst.exists():
        n += 1
        dst = d / f"damaged-{tag}.{n}"
    try:
        os.replace(d / tag, dst)
    except FileNotFoundError:  # another node's launcher moved it first (--no_ssh: one launcher per node)
        return d / f"damaged-{tag}"
    return dst


# ------------------------------------------------------------------------------- watchdog
class Watchdog:
    """See the module docstring. ``step_done`` after every optimizer step; ``paused()`` around a save."""

    def __init__(self, run_dir: Path, rank: int, attempt: int, hang_timeout: float | None,
                 poll_s: float = 0.5) -> None:
        self.run_dir, self.rank, self.attempt = Path(run_dir), rank, attempt
        self.fixed = hang_timeout
        self.poll_s = poll_s
        self.times: deque[float] = deque(maxlen=200)
        self.last_step = 0
        self.last_t: float | None = None  # monotonic time of the last completed step (None: not armed)
        self.pause_depth = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.fixed is None or self.fixed > 0

    def limit(self) -> float:
        if self.fixed is not None:
            return self.fixed
        med = statistics.median(self.times) if self.times else 0.0
        return max(HANG_FLOOR_S, HANG_FACTOR * med)

    def start(self) -> Watchdog:
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="baichuan-hang-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def step_done(self, step: int, step_time_s: float | None) -> None:
        with self._lock:
            if step_time_s is not None and step_time_s > 0:
                self.times.append(step_time_s)
            self.last_step, self.last_t = step, time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            self.pause_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self.pause_depth -= 1
                if self.last_t is not None:
                    self.last_t = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                if self.last_t is None or self.pause_depth:
                    continue
                waited, limit = time.monotonic() - self.last_t, self.limit()
            if waited > limit:
                self._fire(waited, limit)

    def _fire(self, waited: float, limit: float) -> None:
        d = faults_dir(self.run_dir)
        path = d / f"hang-{_stamp()}-attempt{self.attempt}-rank{self.rank}.txt"
        how = ("--hang-timeout" if self.fixed is not None
               else f"{HANG_FACTOR:g}x the median step time, at least {HANG_FLOOR_S:g} s")
        head = (f"rank {self.rank}: no step completed for {waited:.1f} s (limit {limit:.1f} s: {how}); "
                f"last completed step {self.last_step}; pid {os.getpid()}; {_utc(time.time())}")
        try:
            d.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(head + "\nPython stacks of every thread (most recent call first):\n\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
            where = str(path)
        except OSError as e:
            where = f"stderr (could not write {path}: {e})"
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        print(f"baichuan train: watchdog of rank {self.rank}: {head.split(': ', 1)[1]}; Python stacks in {where}; "
              f"aborting (exit status {HANG_EXIT})", file=sys.stderr, flush=True)
        # The other ranks' watchdogs fire within a poll (their last step ended with the same
        # collective): wait for them before the launcher, seeing this exit, stops them.
        time.sleep(2 * self.poll_s + 2.0)
        os._exit(HANG_EXIT)


# ------------------------------------------------------------------------- restart records
def note_error(run_dir: Path, attempt: int, rank: int, line: str) -> None:
    """A rank stopped with a clear error (exit status 2): a relaunch would fail the same way."""
    try:
        d = faults_dir(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"error-{_stamp()}-attempt{attempt}-rank{rank}.txt").write_text(line + "\n", encoding="utf-8")
    except OSError:
        pass


def attempt_faults(run_dir: Path, attempt: int, since: float) -> dict[str, dict[int, str]]:
    """{"hang": {rank: first line}, "error": {rank: line}} written by the ranks of launch ``attempt``
    (files modified at or after ``since``, the launch's start: not an earlier invocation's)."""
    out: dict[str, dict[int, str]] = {"hang": {}, "error": {}}
    d = faults_dir(run_dir)
    for kind in out:
        for p in sorted(d.glob(f"{kind}-*-attempt{attempt}-rank*.txt")) if d.is_dir() else []:
            try:
                if p.stat().st_mtime < since - 1.0:
                    continue
                rank = int(p.stem.rsplit("rank", 1)[1])
                out[kind][rank] = p.read_text(encoding="utf-8", errors="replace").splitlines()[0]
            except (ValueError, IndexError, OSError):
                continue
    return out


def describe_status(status: int) -> str:
    """DeepSpeed's launcher exits with the failed rank's status; a rank killed by signal S shows as
    ``256 - S`` (its ``sys.exit(-S)``)."""
    if status < 0:
        return f"the DeepSpeed launcher was killed by {_signame(-status)}"
    if status == HANG_EXIT:
        return f"a rank's watchdog ended it (exit status {HANG_EXIT})"
    if 256 - 64 <= status <= 255:
        return f"a rank was killed by {_signame(256 - status)} (launcher exit status {status})"
    if 128 < status < 128 + 65:
        return f"a rank was killed by {_signame(status - 128)} (exit status {status})"
    return f"a rank exited with status {status}"


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def last_logged_step(run_dir: Path) -> tuple[int, float | None]:
    """(the last step in metrics.jsonl, the file's modification time) after a failure."""
    path = Path(run_dir) / "metrics.jsonl"
    last = 0
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                last = max(last, int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
        return last, path.stat().st_mtime
    except OSError:
        return 0, None


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / RESTARTS_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / RESTARTS_LOG
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def log_recovered(run_dir: Path, restart: dict[str, Any], step: int) -> dict[str, Any]:
    """Rank 0 of a relaunched job, at its first completed step: the restart's full record."""
    now = time.time()
    rec = dict(restart)
    rec.update(first_new_step=step, first_step_at=_utc(now), first_step_unix=now,
               seconds_to_first_step=round(now - float(restart["detected_unix"]), 3))
    if restart.get("last_step_unix"):
        rec["seconds_since_last_step"] = round(now - float(restart["last_step_unix"]), 3)
    append_record(run_dir, rec)
    return rec


# ------------------------------------------------------------------------------ tests only
class DebugFault:
    """``--debug-fault KIND:RANK:STEP[:ATTEMPTS]`` (hidden, for tests): rank RANK, in launches
    ``attempt < ATTEMPTS`` (default: every launch), at step STEP: ``kill`` SIGKILLs itself when the
    step starts, ``stall`` sleeps there (a hung rank), ``write-error`` fails its checkpoint write of
    that step with ENOSPC."""

    def __init__(self, spec: str | None, rank: int, attempt: int) -> None:
        from baichuan.train_config import parse_debug_fault

        self.kind = None
        if spec:
            kind, r, step, attempts = parse_debug_fault(spec)
            if r == rank and (attempts is None or attempt < attempts):
                self.kind, self.step = kind, step

    def at_step_start(self, step: int) -> None:
        if self.kind == "kill" and step == self.step:
            print(f"--debug-fault: rank SIGKILLs itself at step {step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "stall" and step == self.step:
            self.kind = None
            print(f"--debug-fault: rank stalls at step {step}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

    def at_save(self, step: int, where: Path) -> None:
        if self.kind == "write-error" and step == self.step:
            raise OSError(errno.ENOSPC, "No space left on device (--debug-fault)", str(where))
