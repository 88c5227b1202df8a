"""Issue 10, corpus side: `baichuan tokenize` never reads its own outputs as text, warns (once,
naming the file) about binary-looking inputs, resumes the same job however its paths are spelled
and names what differs when it is another job; tokenizer commands fail with one line naming the
file or flag; one size parser for `--shard-size` and `--input-sentence-size`."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from baichuan.corpus import CorpusError, TokenizeConfig, run_tokenize
from baichuan.units import SizeError, parse_size
from helpers import BAICHUAN_SPM as MODEL
from helpers import EVAL_DATA as EVAL
from helpers import LLAMA2_SPM as OTHER_MODEL
from helpers import skip_module_without_shared

skip_module_without_shared(MODEL, EVAL)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~100 KB of real text (C-Eval val CSVs): several 3000-token shards."""
    d = tmp_path_factory.mktemp("text")
    for i, f in enumerate(sorted((EVAL / "ceval" / "val").glob("*.csv"))[:8]):
        shutil.copy(f, d / f"t{i}.csv")
    return d


def cfg(inputs: list[Path | str], out: Path, **kw) -> TokenizeConfig:
    base = dict(tokenizer=str(MODEL), inputs=[str(p) for p in inputs], output=str(out), workers=2, shard_tokens=3000)
    base.update(kw)
    return TokenizeConfig(**base)


def run(config: TokenizeConfig) -> tuple[dict, list[str]]:
    warnings: list[str] = []
    return run_tokenize(config, progress=False, warn=warnings.append), warnings


def read_dir(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in read_dir(out).items() if k.startswith("shard-")}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "baichuan", *args], capture_output=True, text=True, cwd=cwd, timeout=180)


def one_error_line(r: subprocess.CompletedProcess[str], command: str) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"baichuan {command}: error: "), r.stderr
    return lines[0]


# ---------------------------------------------------------------- our own outputs are never read


def test_earlier_output_among_inputs_is_skipped_with_a_warning(text_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(text_dir, data)
    alone, w = run(cfg([data], tmp_path / "alone"))
    assert w == []
    # earlier outputs (both formats, one finished, one interrupted) now inside the input directory
    run(cfg([data], data / "old"))
    run(cfg([data / "t0.csv"], data / "zz_mega", format="megatron"))
    (data / "old" / "progress.json").write_text("{}")  # as an interrupted job leaves it
    m, w = run(cfg([data], tmp_path / "o"))
    assert [Path(f["path"]).name for f in m["inputs"]] == [Path(f["path"]).name for f in alone["inputs"]]
    assert shard_bytes(tmp_path / "o") == shard_bytes(tmp_path / "alone")
    assert any(x.startswith(f"{data / 'old'}: not read: ") and "earlier `baichuan tokenize` output" in x
               and "manifest.json" in x and "progress.json" in x and "shard-00000.bin" in x and "shard-00000.idx" in x
               for x in w), w
    assert any(x.startswith(f"{data / 'zz_mega'}: not read: ") and "corpus_text_document.bin" in x for x in w), w


def test_loose_token_files_with_our_header_are_skipped(text_dir: Path, tmp_path: Path) -> None:
    """.idx files with our header (a shard index, a Megatron MMIDIDX index) and the .bin beside
    them, copied away from their manifest, are still ours."""
    run(cfg([text_dir], tmp_path / "s"))
    run(cfg([text_dir], tmp_path / "mg", format="megatron"))
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(text_dir / "t0.csv", loose / "t0.csv")
    for name in ("shard-00000.bin", "shard-00000.idx"):
        shutil.copy(tmp_path / "s" / name, loose / name)
    for name in ("corpus_text_document.bin", "corpus_text_document.idx"):
        shutil.copy(tmp_path / "mg" / name, loose / name)
    m, w = run(cfg([loose], tmp_path / "o"))
    assert [Path(f["path"]).name for f in m["inputs"]] == ["t0.csv"]
    assert len(w) == 1 and w[0].startswith(f"{loose}: not read: 4 files of `baichuan tokenize` token data ")
    for name in ("corpus_text_document.bin", "corpus_text_document.idx", "shard-00000.bin", "shard-00000.idx"):
        assert name in w[0]
    # named explicitly: still not read; nothing left is an error naming the input
    with pytest.raises(CorpusError, match="nothing to read: the inputs hold only our own outputs"):
        run(cfg([loose / "shard-00000.idx", loose / "shard-00000.bin"], tmp_path / "o2"))


def test_output_directory_inside_the_input_is_never_read(text_dir: Path, tmp_path: Path) -> None:
    """`--input data --output data/out`: interrupted, then resumed with the same command, gives
    the same bytes as the job written outside (today's main refused the resume)."""
    data = tmp_path / "data"
    shutil.copytree(text_dir, data)
    ref = tmp_path / "ref"
    run(cfg([data], ref))
    args = ["tokenize", "--quiet", "--tokenizer", str(MODEL), "--input", str(data), "--output", str(data / "out"),
            "--shard-size", "3000", "--workers", "2"]
    r = cli(*args, "--debug-kill-after-checkpoints", "2")
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"baichuan tokenize: warning: {data / 'out'}: not read: it is the output directory of this job\n"
    assert read_dir(data / "out") == read_dir(ref)


# ---------------------------------------------------------------- binary-looking inputs


def test_binary_files_warn_once_naming_them(text_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(text_dir / "t0.csv", d / "a.csv")
    text = (d / "a.csv").read_bytes()
    rnd = random.Random(10)
    (d / "b_random.dat").write_bytes(rnd.randbytes(300_000))  # larger than the 64 KiB sample
    (d / "c_random.txt.gz").write_bytes(gzip.compress(rnd.randbytes(20_000)))  # judged decompressed
    (d / "d_gbk.txt").write_bytes(("这是用另一种编码写的中文文本，不是 UTF-8。\n" * 500).encode("gbk"))
    ids = np.array([rnd.randrange(64000) for _ in range(20_000)], dtype="<u2")
    (d / "e_tokens.bin").write_bytes(ids.tobytes())  # token ids without their .idx
    (d / "f_some_bad.txt").write_bytes(text[:3000] + b"\n\xff\xfe broken \xe4\xbd bytes\n" + text[3000:6000])
    (d / "g_latin1.txt").write_bytes(("Une phrase française, écrite à la main. " * 200).encode("latin-1"))
    m, w = run(cfg([d], tmp_path / "o"))
    named = [x.split(": ", 1)[0] for x in w]
    assert named == [str(d / n) for n in ("b_random.dat", "c_random.txt.gz", "d_gbk.txt", "e_tokens.bin")], w
    assert all("mostly not UTF-8 text" in x and "read anyway, invalid bytes dropped (--invalid-utf8 ignore)" in x
               for x in w)
    assert "of its first 65536 bytes are invalid UTF-8 or NUL" in w[0]
    assert m["counts"]["files"] == 7  # warned, still read as before (the output bytes do not change)
    # the command line prints each as one line, also with --quiet
    r = cli("tokenize", "--quiet", "--tokenizer", str(MODEL), "--input", str(d / "b_random.dat"), str(d / "a.csv"),
            "--output", str(tmp_path / "o2"), "--invalid-utf8", "replace")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"baichuan tokenize: warning: {d / 'b_random.dat'}: mostly not UTF-8 text: ")
    assert lines[0].endswith("read anyway, invalid bytes replaced by U+FFFD (--invalid-utf8 replace)")


# ---------------------------------------------------------------- --resume: the job, not its spelling


@pytest.fixture()
def interrupted(text_dir: Path, tmp_path: Path) -> tuple[Path, list[str], Path]:
    """A job started from `tmp_path` with relative paths and a tokenizer reached through a link,
    killed after its 2nd checkpoint; and the output of the same command run to the end."""
    shutil.copytree(text_dir, tmp_path / "corpus")
    os.symlink(MODEL, tmp_path / "tok.model")
    args = ["tokenize", "--quiet", "--tokenizer", "tok.model", "--input", "corpus", "--shard-size", "3000"]
    r = cli(*args, "--output", "ref", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli(*args, "--output", "out", "--debug-kill-after-checkpoints", "2", cwd=tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path / "out" / "progress.json").exists()
    return tmp_path, args, tmp_path / "ref"


def test_resume_accepts_the_same_job_spelled_otherwise(interrupted) -> None:
    root, _, ref = interrupted
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    # absolute paths, a trailing '/', the tokenizer's real path, another working directory
    again = ["tokenize", "--quiet", "--tokenizer", str(MODEL), "--input", f"{root / 'corpus'}/",
             "--output", "../out/", "--shard-size", "3000", "--workers", "1"]
    r = cli(*again, "--resume", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert read_dir(root / "out") == read_dir(ref)  # byte-identical: the job keeps its first spelling
    # resuming the finished job, spelled otherwise still: nothing to do
    r = cli(*again, "--resume", "--input", "../corpus", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert read_dir(root / "out") == read_dir(ref)


def test_resume_refusal_names_what_differs(interrupted) -> None:
    root, _, _ = interrupted

    def refused(**kw) -> str:
        out = root / f"copy{len(list(root.glob('copy*')))}"
        shutil.copytree(root / "out", out)
        base = dict(tokenizer=str(MODEL), inputs=[str(root / "corpus")], shard_tokens=3000, resume=True)
        base.update(kw)
        with pytest.raises(CorpusError) as e:
            run(TokenizeConfig(output=str(out), **base))
        msg = str(e.value)
        assert msg.startswith(f"{out / 'progress.json'}: was written for another job: ")
        assert msg.endswith("; cannot resume (use --overwrite to start again)")
        return msg

    assert "--min-tokens was 20 and is now 3" in refused(min_tokens=3)
    assert "--shard-size was 3000 and is now 4000" in refused(shard_tokens=4000)
    if OTHER_MODEL.exists():
        assert f"the tokenizer differs ({OTHER_MODEL} has sha256 " in refused(tokenizer=str(OTHER_MODEL))
    extra = root / "extra.txt"
    extra.write_text("one more line of text that is long enough to make a document of its own\n")
    assert f"input {extra} ({extra}) is new" in refused(inputs=[str(root / "corpus"), str(extra)])
    assert f"input corpus/t7.csv ({root / 'corpus' / 't7.csv'}) is no longer among the inputs" in refused(
        inputs=[str(root / "corpus" / f"t{i}.csv") for i in range(7)])
    changed = root / "corpus" / "t5.csv"
    changed.write_bytes(changed.read_bytes() + b"appended\n")
    assert f"input {changed} changed since (size " in refused()


def test_resume_finished_job_refusal_names_what_differs(text_dir: Path, tmp_path: Path) -> None:
    run(cfg([text_dir], tmp_path / "o"))
    with pytest.raises(CorpusError, match=r"holds a finished job with other inputs or options: --min-tokens was 20 "
                                          r"and is now 5; use --overwrite to replace it"):
        run(cfg([text_dir], tmp_path / "o", resume=True, min_tokens=5))
    m, _ = run(cfg([f"{text_dir}/", str(text_dir / "*.csv")], tmp_path / "o", resume=True))  # same files: no-op
    assert m["options"]["inputs"] == [str(text_dir)]


# ---------------------------------------------------------------- one line per user error


def test_tokenizer_command_errors_are_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a model\n")
    text = tmp_path / "a.txt"
    text.write_text("some text\n")
    line = one_error_line(cli("encode", "--tokenizer", str(tmp_path / "missing.model"), "hi"), "encode")
    assert line == f"baichuan encode: error: {tmp_path / 'missing.model'}: No such file or directory (os error 2)"
    line = one_error_line(cli("encode", "--tokenizer", str(garbage), "hi"), "encode")
    assert line.startswith(f"baichuan encode: error: {garbage}: invalid SentencePiece model: ")
    base = ["tokenize", "--quiet", "--output", str(tmp_path / "o")]
    line = one_error_line(cli(*base, "--tokenizer", str(tmp_path / "missing.model"), "--input", str(text)), "tokenize")
    assert line == f"baichuan tokenize: error: {tmp_path / 'missing.model'}: No such file or directory (os error 2)"
    line = one_error_line(cli(*base, "--tokenizer", str(garbage), "--input", str(text)), "tokenize")
    assert line.startswith(f"baichuan tokenize: error: {garbage}: invalid SentencePiece model: ")
    line = one_error_line(cli(*base, "--tokenizer", str(MODEL), "--input", str(tmp_path / "nope.txt")), "tokenize")
    assert line == f"baichuan tokenize: error: {tmp_path / 'nope.txt'}: no such file or directory"
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip at all")
    line = one_error_line(cli(*base, "--tokenizer", str(MODEL), "--input", str(bad)), "tokenize")
    assert line.startswith(f"baichuan tokenize: error: {bad}: ")


# ---------------------------------------------------------------- train-tokenizer


def test_size_parser_is_shared() -> None:
    from baichuan.commands import tokenize, train_tokenizer

    assert not hasattr(tokenize, "parse_size")
    assert parse_size("20000") == 20000 and parse_size("64M") == 64 << 20 and parse_size("10M") == 10 << 20
    assert parse_size("256MiB") == 256 << 20 and parse_size("2GB") == 2 * 10**9 and parse_size("1.5K") == 1536
    for bad in ("", "x", "0", "-5", "1.2.3", "5MBB", "inf"):
        with pytest.raises(SizeError):
            parse_size(bad)
    import argparse

    for module, flag in ((tokenize, "--shard-size"), (train_tokenizer, "--input-sentence-size")):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        required = ["--input", "x", "--output", "y"] + (["--tokenizer", "t"] if module is tokenize else [])
        ns = p.parse_args([*required, flag, "10M"])
        assert getattr(ns, "shard_tokens" if module is tokenize else "input_sentence_size") == 10 << 20


def test_train_tokenizer_errors_name_the_file_and_our_flags(text_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    notgz = tmp_path / "corpus.txt.gz"
    notgz.write_bytes(b"hello, plain text under a .gz name\n")
    base = ["train-tokenizer", "--model-prefix", str(tmp_path / "m"), "--symbols", "none", "--reserved", "0"]
    line = one_error_line(cli(*base, "--input", str(text_dir), str(notgz), "--vocab-size", "300"), "train-tokenizer")
    assert line == f"baichuan train-tokenizer: error: {notgz}: cannot read it: invalid gzip header"  # tokenize's reader
    truncated = tmp_path / "cut.txt.gz"
    truncated.write_bytes(gzip.compress((text_dir / "t0.csv").read_bytes())[:-100])
    line = one_error_line(cli(*base, "--input", str(truncated), "--vocab-size", "300"), "train-tokenizer")
    assert line.startswith(f"baichuan train-tokenizer: error: {truncated}: cannot read it: ")
    line = one_error_line(cli(*base, "--input", str(text_dir), "--character-coverage", "2"), "train-tokenizer")
    assert line == ("baichuan train-tokenizer: error: sentencepiece's trainer refused the options: it requires "
                    "--character-coverage >= 0.98 && --character-coverage <= 1.0")
    line = one_error_line(cli(*base, "--input", str(text_dir), "--vocab-size", "400", "--character-coverage", "1.0"),
                          "train-tokenizer")
    assert "character_coverage" not in line and "vocab_size" not in line and "--vocab-size" in line, line
    # --input-sentence-size takes a size like --shard-size
    r = cli(*base, "--input", str(text_dir), "--vocab-size", "1500", "--character-coverage", "0.98",
            "--input-sentence-size", "1K")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.model").exists()


def test_train_tokenizer_reads_what_tokenize_reads(text_dir: Path, tmp_path: Path) -> None:
    """train-tokenizer discovers inputs with tokenize's own rule: an earlier output among them is
    left out with the same warning, not trained on as text."""
    pytest.importorskip("sentencepiece")
    from baichuan.tokenizer_training import TrainTokenizerConfig, discover_files, train_tokenizer

    data = tmp_path / "data"
    shutil.copytree(text_dir, data)
    run(cfg([text_dir], data / "shards"))
    warnings: list[str] = []
    assert discover_files([str(data)], warnings.append) == sorted(data.glob("*.csv"))
    assert len(warnings) == 1 and warnings[0].startswith(f"{data / 'shards'}: not read: ")
    small = dict(vocab_size=1500, character_coverage=0.98, user_defined_symbols=[])
    r = train_tokenizer(TrainTokenizerConfig(inputs=[str(data)], model_prefix=str(tmp_path / "a"), **small),
                        warn=warnings.append)
    plain = train_tokenizer(TrainTokenizerConfig(inputs=[str(text_dir)], model_prefix=str(tmp_path / "b"), **small))
    assert r.sentences == plain.sentences and len(warnings) == 2
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    with pytest.raises(CorpusError, match="nope: no such file or directory"):
        discover_files([str(tmp_path / "nope")])


def test_warnings_do_not_mix_into_the_progress_line() -> None:
    import io

    from baichuan.corpus import ProgressLine

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Tty()
    bar = ProgressLine(buf, interval=0.0)
    p = dict(raw_bytes_total=10, raw_bytes_skipped=0, raw_bytes_read=5, files_done=0, files_total=1, text_bytes=5,
             tokens=3)
    bar.update(p, force=True)
    width = bar.width
    bar.message("baichuan tokenize: warning: x.bin: mostly not UTF-8 text")
    bar.update(p, force=True)
    out = buf.getvalue()
    assert out.startswith("\rtokenize ")
    assert "\r" + " " * width + "\rbaichuan tokenize: warning: x.bin: mostly not UTF-8 text\n\rtokenize " in out
