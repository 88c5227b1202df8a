#!/usr/bin/env python3
"""Benchmark of bulk corpus tokenization; prints markdown tables.

1. Speed, on one corpus: upstream's way (Python loop over ``sentencepiece`` ``EncodeAsIds`` in
   one process, as Baichuan-7B's ``DataEngine.load_data``: read lines, strip, encode, append EOS,
   drop < 20, keep everything in RAM), ``baichuan tokenize`` with 1 and 2 workers, and
   ``Tokenizer.encode_batch`` with 2 threads on the same lines already in memory (the ceiling the
   pipeline is measured against). MB/s of input text and peak RSS, each in a fresh process.
2. Memory: ``baichuan tokenize --workers 2`` on corpora of growing size: peak RSS must not grow.

The corpus is real text: every text field of ``../shared/eval-data`` (one per line), repeated
to the wanted size. Usage::

    python scripts/bench_tokenize.py                       # 24 MB speed corpus, 24/96/384 MB memory runs
    python scripts/bench_tokenize.py --speed-mb 8 --memory-mb 8,32   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "spm-models" / "baichuan-7b.model"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_base_lines() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from tokenizer_corpus import eval_texts  # every text field of the eval data, real parsers

    return [" ".join(t.split()) for t in eval_texts() if t.strip()]


def write_corpus(path: Path, lines: list[str], mb: float) -> int:
    """Writes ``lines`` repeatedly into files of about 32 MB under ``path`` until ``mb`` MB."""
    path.mkdir(parents=True, exist_ok=True)
    block = ("\n".join(lines) + "\n").encode("utf-8")
    target = int(mb * 1e6)
    written = 0
    i = 0
    while written < target:
        with open(path / f"part-{i:04d}.txt", "wb") as f:
            size = 0
            while size < 32_000_000 and written < target:
                chunk = block
                if target - written < len(block):  # end on a line boundary
                    chunk = block[: target - written]
                    chunk = chunk[: chunk.rfind(b"\n") + 1]
                    if not chunk:
                        target = written
                        break
                f.write(chunk)
                size += len(chunk)
                written += len(chunk)
        i += 1
    return written


def corpus_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


# ---------------------------------------------------------------- children (one measurement each)


def child_upstream(corpus: Path) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.Load(str(MODEL))
    t = time.perf_counter()
    data: list[int] = []
    for p in sorted(corpus.iterdir()):
        with open(p, encoding="utf-8", errors="ignore") as f:
            for line in f:
                cc = sp.EncodeAsIds(line.strip()) + [2]
                if len(cc) < 20:
                    cc = []
                data.extend(cc)
    return {"seconds": time.perf_counter() - t, "tokens": len(data)}


def child_ours(corpus: Path, workers: int, out: Path) -> dict:
    from baichuan.corpus import TokenizeConfig, run_tokenize

    t = time.perf_counter()
    m = run_tokenize(
        TokenizeConfig(tokenizer=str(MODEL), inputs=[str(corpus)], output=str(out), workers=workers, overwrite=True),
        progress=False,
    )
    return {"seconds": time.perf_counter() - t, "tokens": m["counts"]["tokens"]}


def child_batch(corpus: Path, threads: int) -> dict:
    from baichuan import Tokenizer

    tok = Tokenizer.from_file(MODEL)
    lines: list[str] = []
    for p in sorted(corpus.iterdir()):
        with open(p, encoding="utf-8", errors="ignore") as f:
            lines.extend(line.strip() for line in f)
    t = time.perf_counter()
    n = 0
    for i in range(0, len(lines), 20000):
        for ids in tok.encode_batch(lines[i : i + 20000], num_threads=threads):
            n += len(ids)
    return {"seconds": time.perf_counter() - t, "tokens": n}


def run_child(*args: str, repeat: int = 1) -> dict:
    """Runs one measurement in a fresh process ``repeat`` times; keeps the fastest run (the least
    disturbed by other load on the machine) and the largest peak RSS."""
    best: dict | None = None
    rss = 0.0
    for _ in range(repeat):
        r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"child {args} failed:\n{r.stderr}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rss = max(rss, res["peak_rss_mb"])
        if best is None or res["seconds"] < best["seconds"]:
            best = res
    assert best is not None
    best["peak_rss_mb"] = rss
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed-mb", type=float, default=24)
    ap.add_argument("--memory-mb", default="24,96,384", help="corpus sizes (MB) for the memory runs")
    ap.add_argument("--workdir", default=None, help="where to write corpora (default: a temp dir)")
    ap.add_argument("--skip-upstream", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs per speed measurement; the fastest is kept")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        kind, corpus = a.child[0], Path(a.child[1])
        if kind == "upstream":
            r = child_upstream(corpus)
        elif kind == "ours":
            r = child_ours(corpus, int(a.child[2]), Path(a.child[3]))
        elif kind == "batch":
            r = child_batch(corpus, int(a.child[2]))
        else:
            raise SystemExit(f"unknown child {kind}")
        r["peak_rss_mb"] = _rss_mb()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        r["cpu_seconds"] = ru.ru_utime + ru.ru_stime  # whole process, model loading included
        print(json.dumps(r))
        return 0

    if not MODEL.exists():
        print(f"{MODEL} is absent", file=sys.stderr)
        return 1
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        base = make_base_lines()
        speed = work / "speed"
        size = write_corpus(speed, base, a.speed_mb)
        mb = size / 1e6
        print(f"## Speed: {mb:.1f} MB of eval-data text ({os.cpu_count()} cores, best of {a.repeat})\n")
        print("| method | seconds | MB/s | tokens/s | CPU seconds | peak RSS (MB) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        rows = []
        if not a.skip_upstream:
            upstream = run_child("upstream", str(speed), repeat=a.repeat)
            rows.append(("upstream: Python loop over sentencepiece EncodeAsIds, 1 process", upstream))
        rows.append(("Tokenizer.encode_batch, 2 threads (lines in memory)", run_child("batch", str(speed), "2", repeat=a.repeat)))
        rows.append(("baichuan tokenize --workers 1", run_child("ours", str(speed), "1", str(work / "out1"), repeat=a.repeat)))
        rows.append(("baichuan tokenize --workers 2", run_child("ours", str(speed), "2", str(work / "out2"), repeat=a.repeat)))
        for name, r in rows:
            print(
                f"| {name} | {r['seconds']:.2f} | {mb / r['seconds']:.2f} | {r['tokens'] / r['seconds']:,.0f} "
                f"| {r['cpu_seconds']:.2f} | {r['peak_rss_mb']:.0f} |"
            )
        batch = next(r for n, r in rows if n.startswith("Tokenizer.encode_batch"))
        ours2 = rows[-1][1]
        print(f"\nours (2 workers) / encode_batch (2 threads): {batch['seconds'] / ours2['seconds'] * 100:.0f}%\n")
        shutil.rmtree(speed)

        if not a.memory_mb:
            return 0
        print("## Memory: baichuan tokenize --workers 2 on growing corpora\n")
        print("| corpus (MB) | seconds | MB/s | peak RSS (MB) |")
        print("| ---: | ---: | ---: | ---: |")
        for s in [float(x) for x in a.memory_mb.split(",") if x]:
            c = work / f"mem-{s:g}"
            size = write_corpus(c, base, s)
            r = run_child("ours", str(c), "2", str(work / "outm"))
            print(f"| {size / 1e6:.0f} | {r['seconds']:.1f} | {size / 1e6 / r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
            shutil.rmtree(c)
            shutil.rmtree(work / "outm")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
