"""Issue 12 §3 and `--holdout`: `baichuan tokenize --partition I/N` on N machines, then
`baichuan merge-shards`, gives a single run's output byte for byte (shards, shard boundaries,
manifest, holdout); a SIGKILLed partition resumes; `--holdout` documents never reach the training
shards and do not depend on workers or partitions; bad partition specs and bad partition sets are
one-line errors naming them, with nothing written."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from baichuan.corpus import iter_documents
from helpers import BAICHUAN_SPM as MODEL
from helpers import EVAL_DATA as EVAL
from helpers import LLAMA2_SPM as OTHER_MODEL
from helpers import skip_module_without_shared

skip_module_without_shared(MODEL, EVAL)

N = 3
OPTS = ("--shard-size", "3000", "--holdout", "0.05", "--quiet")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "baichuan", *args], capture_output=True, text=True, timeout=180, check=False)


def tokenize(inp: Path, out: Path, *extra: str, model: Path = MODEL) -> subprocess.CompletedProcess[str]:
    return cli("tokenize", "--tokenizer", str(model), "--input", str(inp), "--output", str(out), *OPTS, *extra)


def one_error_line(r: subprocess.CompletedProcess[str], command: str) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"baichuan {command}: error: "), r.stderr
    return lines[0]


def files(d: Path) -> dict[str, bytes]:
    """Every file under `d` (relative name -> bytes), but the lock file a tokenize job leaves."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".tokenize.lock"}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """~120 KB of text in 12 files of unequal sizes; a single run, and 3 partitions run as
    separate processes with different worker counts, partition 1 SIGKILLed and resumed."""
    root = tmp_path_factory.mktemp("pm")
    inp = root / "in"
    inp.mkdir()
    for i, f in enumerate(sorted((EVAL / "ceval" / "val").glob("*.csv"))[:12]):
        shutil.copy(f, inp / f"t{i:02d}.csv")
    r = tokenize(inp, root / "single", "--workers", "2")
    assert r.returncode == 0, r.stderr
    for i in range(N):
        out = root / f"part{i}"
        if i == 1:
            r = tokenize(inp, out, "--partition", f"{i}/{N}", "--workers", "2", "--debug-kill-after-checkpoints", "1")
            assert r.returncode == -signal.SIGKILL, r.stderr
            assert (out / "progress.json").exists() and not (out / "manifest.json").exists()
            r = tokenize(inp, out, "--partition", f"{i}/{N}", "--workers", "1", "--resume")
        else:
            # (--resume on a fresh directory just starts: what a requeued Slurm task runs)
            r = tokenize(inp, out, "--partition", f"{i}/{N}", "--workers", str(i + 1), *(["--resume"] if i == 2 else []))
        assert r.returncode == 0, r.stderr
    return {"root": root, "in": inp, "single": root / "single", **{f"p{i}": root / f"part{i}" for i in range(N)}}


def test_three_partitions_merge_to_a_single_run_byte_for_byte(job: dict[str, Path]) -> None:
    parts = [job[f"p{i}"] for i in range(N)]
    ms = [json.loads((p / "manifest.json").read_text()) for p in parts]
    # contiguous shares of the sorted file list, every file once, balanced by bytes
    assert [m["partition"]["index"] for m in ms] == [0, 1, 2]
    assert [m["partition"]["first_file"] for m in ms] == [0, len(ms[0]["inputs"]), len(ms[0]["inputs"]) + len(ms[1]["inputs"])]
    single = json.loads((job["single"] / "manifest.json").read_text())
    assert [f["path"] for m in ms for f in m["inputs"]] == [f["path"] for f in single["inputs"]]
    assert all(m["options"]["partition"] == f"{i}/{N}" for i, m in enumerate(ms))
    assert len({m["partition"]["inputs_sha256"] for m in ms}) == 1
    sizes = [sum(f["size"] for f in m["inputs"]) for m in ms]
    assert max(sizes) < 0.6 * sum(sizes), sizes  # by bytes, not by file count
    # merged in any argument order: the single run's files, byte for byte (manifest and holdout included)
    out = job["root"] / "merged"
    r = cli("merge-shards", "--output", str(out), "--quiet", str(parts[2]), str(parts[0]), str(parts[1]))
    assert r.returncode == 0, r.stderr
    want = files(job["single"])
    assert "holdout/manifest.json" in want and sum(k.endswith(".bin") for k in want) > 4
    assert files(out) == want
    # into an earlier merge: refused, then --overwrite (a user's file there stays), with a progress line
    (out / "notes.txt").write_text("mine")
    line = one_error_line(cli("merge-shards", "--output", str(out), *map(str, parts)), "merge-shards")
    assert f"{out}: is not empty; use --overwrite" in line, line
    r = cli("merge-shards", "--output", str(out), "--overwrite", *map(str, parts))
    assert r.returncode == 0 and "merge-shards 100.0%" in r.stderr, r.stderr
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert files(out) == want


def test_holdout_is_never_trained_on_and_stable(job: dict[str, Path], tmp_path: Path) -> None:
    single = job["single"]
    held = [d.tolist() for d in iter_documents(single / "holdout")]
    train = [d.tolist() for d in iter_documents(single)]
    r = cli("tokenize", "--tokenizer", str(MODEL), "--input", str(job["in"]), "--output", str(tmp_path / "all"),
            "--shard-size", "3000", "--quiet")
    assert r.returncode == 0, r.stderr
    everything = [d.tolist() for d in iter_documents(tmp_path / "all")]
    # held-out and training documents are the whole corpus, each document in exactly one of them
    assert 5 <= len(held) <= 0.15 * len(everything)
    assert sorted(map(tuple, held + train)) == sorted(map(tuple, everything))
    assert not set(map(tuple, held)) & set(map(tuple, train))
    m = json.loads((single / "manifest.json").read_text())
    hm = json.loads((single / "holdout" / "manifest.json").read_text())
    assert m["holdout"] == {"per_million": 50000, "path": "holdout"} and hm["holdout"]["path"] == ".."
    assert hm["counts"]["documents"] == m["counts"]["holdout_documents"] == len(held)
    assert m["counts"]["documents"] == len(train)
    # the same holdout whatever the worker count (and, above, whatever the partitioning)
    r = tokenize(job["in"], tmp_path / "w3", "--workers", "3")
    assert r.returncode == 0, r.stderr
    assert files(tmp_path / "w3") == files(single)
    # readable as a training shard directory (what `train --eval-data OUT/holdout` reads)
    from baichuan.data import ShardManifest

    sm = ShardManifest.load(single / "holdout")
    assert sm.total_tokens == hm["counts"]["tokens"] > 0


@pytest.mark.parametrize(
    "spec, why",
    [
        ("3/3", "--partition 3/3: the index I must be below N (0 to 2)"),
        ("0/0", "--partition 0/0: the count N must be at least 1"),
        ("-1/2", "--partition -1/2: expected I/N with whole numbers"),
        ("a/b", "--partition a/b: expected I/N with whole numbers"),
        ("1", "--partition 1: expected I/N"),
    ],
)
def test_bad_partition_spec_is_one_line_and_writes_nothing(job: dict[str, Path], tmp_path: Path, spec: str, why: str) -> None:
    out = tmp_path / "out"
    line = one_error_line(tokenize(job["in"], out, "--partition", spec), "tokenize")
    assert why in line, line
    assert not out.exists()


def test_bad_holdout_and_megatron_partition(job: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    for bad in ("0", "1.5", "x", "0.0000001"):
        line = one_error_line(cli("tokenize", "--tokenizer", str(MODEL), "--input", str(job["in"]), "--output", str(out),
                                  "--holdout", bad), "tokenize")
        assert f"--holdout {bad}: " in line, line
    line = one_error_line(tokenize(job["in"], out, "--partition", "0/2", "--format", "megatron"), "tokenize")
    assert "--partition 0/2: works with the shard format only" in line, line
    assert not out.exists()


def test_bad_partition_sets_are_refused_naming_them(job: dict[str, Path], tmp_path: Path) -> None:
    p0, p1, p2 = (job[f"p{i}"] for i in range(N))
    out = tmp_path / "out"

    def refused(*parts: Path) -> str:
        line = one_error_line(cli("merge-shards", "--output", str(out), "--quiet", *map(str, parts)), "merge-shards")
        assert not out.exists(), line
        return line

    assert "partition 1/3 is missing (given: 0/3, 2/3)" in refused(p0, p2)
    dup = tmp_path / "dup"
    shutil.copytree(p1, dup)
    line = refused(p0, p1, dup, p2)
    assert str(dup) in line and "is partition 1/3, and so is" in line and str(p1) in line, line
    line = refused(p0, p1, p1, p2)
    assert "is given twice" in line, line
    other_tok = tmp_path / "other-tok"
    assert tokenize(job["in"], other_tok, "--partition", "1/3", model=OTHER_MODEL).returncode == 0
    line = refused(p0, other_tok, p2)
    assert str(other_tok) in line and "was made with another tokenizer" in line and "llama2.model" in line, line
    other_opt = tmp_path / "other-opt"
    assert tokenize(job["in"], other_opt, "--partition", "1/3", "--min-tokens", "5").returncode == 0
    line = refused(p0, other_opt, p2)
    assert str(other_opt) in line and "other options" in line and "--min-tokens 5 here, 20 there" in line, line
    other_n = tmp_path / "other-n"
    assert tokenize(job["in"], other_n, "--partition", "1/4").returncode == 0
    line = refused(p0, other_n, p2)
    assert str(other_n) in line and "is partition 1/4" in line, line
    line = refused(p0, job["single"], p2)
    assert str(job["single"]) in line and "was not made with --partition" in line, line
    unfinished = tmp_path / "unfinished"
    r = tokenize(job["in"], unfinished, "--partition", "1/3", "--debug-kill-after-checkpoints", "1")
    assert r.returncode == -signal.SIGKILL
    line = refused(p0, unfinished, p2)
    assert str(unfinished) in line and "unfinished" in line, line
    # an output that is not empty, or is a partition
    out.mkdir()
    (out / "x").write_text("x")
    line = one_error_line(cli("merge-shards", "--output", str(out), str(p0), str(p1), str(p2)), "merge-shards")
    assert "is not empty; use --overwrite" in line and sorted(p.name for p in out.iterdir()) == ["x"], line
    line = one_error_line(cli("merge-shards", "--output", str(p0), str(p0), str(p1), str(p2)), "merge-shards")
    assert "choose another --output" in line, line
