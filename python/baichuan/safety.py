"""Output folders: what a command may write into, and what ``--overwrite`` may delete.

Every command that writes a folder (``baichuan train``'s run directory, ``export-hf``, ``demo``)
goes through :func:`plan_output` before it writes anything, then :meth:`OutputPlan.apply`:

* A folder that is absent or empty is fine; :meth:`OutputPlan.apply` creates it and writes the
  marker ``.baichuan-output.json`` (``{"tool": "baichuan", "kind": ..., "names": [...]}``) naming
  the command and the top-level entries it is about to write.
* Without ``--overwrite`` a folder that already holds this command's output (for ``train``: a run,
  unless ``--resume``) is refused; an ``export-hf``/``demo`` folder must be empty or absent.
* ``--overwrite`` deletes only entries this project wrote: those named by the marker or matching
  the command's own file names, in a folder recognised by the marker (or, for a run directory
  written before markers existed, by its ``run.json``).
  It never deletes the folder itself, never ``/``, the home directory or the current directory
  (or a folder holding it), never a folder this command did not write, never an input the command
  reads; an ``export-hf``/``demo`` folder that also holds other files is refused as a whole
  (``train`` leaves other files in a run directory alone, as ``baichuan tokenize`` does).

Refusals raise :class:`baichuan.errors.RefusedError` naming the folder and the reason; nothing is
deleted before every check has passed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from baichuan.errors import RefusedError

MARKER = ".baichuan-output.json"

_REMOTE_FILES = ("configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py")


@dataclass(frozen=True)
class OutputKind:
    """What one command writes into its output folder."""

    name: str  # the command: "train", "export-hf", "demo"
    flag: str  # the option naming the folder, for messages
    patterns: tuple[str, ...]  # top-level entries the command writes (fnmatch patterns)
    # A file the command always writes, recognising its output from before markers existed (None:
    # the marker only; an HF or demo folder's files could as well be someone else's).
    manifest: str | None
    exclusive: bool  # True: the folder holds this output only; False: other files are left alone
    # Entries whose presence means "a previous output is here" (default: any of ``patterns``).
    previous: tuple[str, ...] = ()


KINDS: dict[str, OutputKind] = {
    "train": OutputKind(
        "train", "--output-dir",
        ("run.json", "metrics.jsonl", "tensorboard", "loss.png", "checkpoints", "train_config.json",
         "restarts.jsonl", "faults", "*.tmp"),
        "run.json", exclusive=False,
        previous=("run.json", "metrics.jsonl", "checkpoints", "loss.png", "tensorboard"),
    ),
    "export-hf": OutputKind(
        "export-hf", "--output",
        ("model-*-of-*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
         "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", *_REMOTE_FILES),
        None, exclusive=True,
    ),
    "demo": OutputKind(
        "demo", "--output", ("corpus", "tokenizer.model", "tokenizer.vocab", "shards", "train"),
        None, exclusive=True,
    ),
}


@dataclass
class OutputPlan:
    """The checked outcome of :func:`plan_output`: what to delete, then the folder to write."""

    path: Path
    kind: OutputKind
    delete: list[Path] = field(default_factory=list)
    keep_names: list[str] = field(default_factory=list)  # recorded names that stay (resume)

    def apply(self, names: Iterable[str] = ()) -> Path:
        """Delete the previous output (``--overwrite``), create the folder, write the marker."""
        for entry in self.delete:
            _remove(entry)
        self.path.mkdir(parents=True, exist_ok=True)
        write_marker(self.path, self.kind.name, [*self.keep_names, *names])
        return self.path


def read_marker(folder: Path) -> dict | None:
    """The marker's content, or None when the folder has none. An unreadable marker is refused."""
    p = folder / MARKER
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RefusedError(f"{p}: cannot read this output marker ({e}); delete it by hand if the folder is yours") from None
    if not isinstance(data, dict) or data.get("tool") != "baichuan" or not isinstance(data.get("kind"), str):
        raise RefusedError(f"{p}: not a baichuan output marker")
    return data


def write_marker(folder: Path, kind: str, names: Iterable[str]) -> None:
    data = {"tool": "baichuan", "kind": kind, "version": 1, "names": sorted(set(names))}
    # A name of this process's own: the launchers of several nodes may write one shared run folder's
    # marker at the same moment (each rename is atomic; the last one wins, with the same content).
    tmp = folder / f"{MARKER}.{socket.gethostname()}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def plan_output(
    path: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    resume: bool = False,
) -> OutputPlan:
    """Check that ``kind``'s command may write ``path``; raise :class:`RefusedError` if not.

    ``inputs`` are the files and folders the command reads: ``--overwrite`` never deletes one of
    them (nor a folder holding one). Nothing is touched here; :meth:`OutputPlan.apply` acts."""
    k = KINDS[kind]
    out = Path(path)
    if overwrite and resume:
        raise RefusedError(f"--overwrite and --resume contradict each other ({out}); pass one of them")
    if not out.exists() and not out.is_symlink():
        return OutputPlan(out, k)
    if not out.is_dir():
        raise RefusedError(f"{k.flag} {out} is a file, not a folder")
    marker = read_marker(out)
    if marker is not None and marker["kind"] != k.name:
        raise RefusedError(
            f"{out} holds the output of `baichuan {marker['kind']}`, not of `baichuan {k.name}`; "
            f"choose another {k.flag}"
        )
    entries = sorted((e for e in out.iterdir() if not e.name.startswith(MARKER)), key=lambda e: e.name)
    recorded = set(marker.get("names", [])) if marker else set()
    recognised = marker is not None or _legacy_manifest(out, k)
    ours = [e for e in entries if recognised and (_is_ours(e.name, k, recorded) or _nested_output(e))]
    others = [e for e in entries if e not in ours]
    if k.exclusive:
        if not entries:
            return OutputPlan(out, k)
        if not overwrite:
            what = "holds a previous output" if recognised else "is not empty"
            raise RefusedError(f"{out} {what}; pass --overwrite to replace it, or choose another {k.flag}")
        if not recognised:
            raise RefusedError(
                f"{out} is not empty and was not written by `baichuan {k.name}` (no {MARKER}); --overwrite "
                f"deletes only a folder this command wrote. Choose an empty or new {k.flag}"
            )
        if others:
            raise RefusedError(
                f"{out} also holds files `baichuan {k.name}` did not write ({_names(others)}); --overwrite "
                f"deletes only this command's own output. Move them away or choose another {k.flag}"
            )
    else:
        previous = [e for e in entries if _matches(e.name, k.previous)]
        if previous and not overwrite and not resume:
            raise RefusedError(
                f"{out} already holds a training run ({_names(previous)}); pass --resume to continue it, "
                f"--overwrite to delete it and start again, or choose another {k.flag}"
            )
        if previous and overwrite and not recognised:
            raise RefusedError(
                f"{out} holds {_names(previous)} but no {k.manifest} or {MARKER}: not a run written by "
                f"`baichuan {k.name}`, so --overwrite deletes nothing there. Choose another {k.flag}"
            )
    if resume or not overwrite:
        return OutputPlan(out, k, keep_names=sorted(recorded | {e.name for e in ours}))
    if ours:
        _check_deletable(out, k, ours, inputs)
    return OutputPlan(out, k, delete=ours)


# ------------------------------------------------------------------------------ helpers
def _legacy_manifest(out: Path, k: OutputKind) -> bool:
    """``run.json`` of a run from before markers: a JSON object with our own keys."""
    if k.manifest is None or not (out / k.manifest).is_file():
        return False
    try:
        data = json.loads((out / k.manifest).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and {"train_config", "model_config"} <= set(data)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_ours(name: str, k: OutputKind, recorded: set[str]) -> bool:
    return name in recorded or _matches(name, k.patterns)


def _nested_output(entry: Path) -> bool:
    """A sub-folder holding another baichuan output and nothing else (e.g. ``demo/hf`` written by
    ``export-hf --output demo/hf``, as the demo suggests)."""
    if not entry.is_dir() or entry.is_symlink() or not (entry / MARKER).is_file():
        return False
    try:
        marker = read_marker(entry)
    except RefusedError:
        return False
    k = KINDS.get(str(marker.get("kind"))) if marker else None
    if k is None:
        return False
    recorded = set(marker.get("names", [])) if marker else set()
    return all(
        e.name.startswith(MARKER) or _is_ours(e.name, k, recorded) or _nested_output(e)
        for e in entry.iterdir()
    )


def _names(entries: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(e.name for e in entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _check_deletable(out: Path, k: OutputKind, doomed: Sequence[Path], inputs: Sequence[str | os.PathLike[str] | None]) -> None:
    real = out.resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if real == Path(real.anchor) or real == home:
        raise RefusedError(f"--overwrite refuses to delete anything in {out} ({real} is / or the home directory)")
    if real == cwd or real in cwd.parents:
        raise RefusedError(
            f"--overwrite refuses to delete anything in {out}: it is the current directory or holds it; "
            f"choose another {k.flag}"
        )
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        ip = Path(inp)
        if not ip.exists():
            continue
        ireal = ip.resolve()
        if ireal == real:
            raise RefusedError(f"--overwrite would delete files of {inp}, which this command reads; choose another {k.flag}")
        for d in doomed:
            dreal = d.resolve() if not d.is_symlink() else d.parent.resolve() / d.name
            if ireal == dreal or dreal in ireal.parents or (d.is_symlink() and ip.absolute() == d.absolute()):
                raise RefusedError(
                    f"--overwrite would delete {d}, which holds the input {inp} this command reads; "
                    f"choose another {k.flag}"
                )


def _remove(entry: Path) -> None:
    if entry.is_symlink() or not entry.is_dir():
        entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(entry)
