#!/usr/bin/env python3
"""Tokenizer benchmark: ours vs sentencepiece (and HF tokenizers converted from the same model)
on the evaluation data's text fields (~23 MB of mixed zh/en). Prints a table of MB/s and ratios.

    python scripts/bench_tokenizer.py                       # Baichuan-7B, whole corpus
    python scripts/bench_tokenizer.py --model llama2 --limit-mb 5

Every "ours" run uses a freshly loaded tokenizer, so its chunk cache starts cold. Each figure is
the best of --reps runs. Timings are for this machine only; there are no thresholds here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from baichuan import Tokenizer  # noqa: E402
from tokenizer_corpus import EVAL_DIR, eval_texts, model_path  # noqa: E402

T = TypeVar("T")


CPU: dict[int, float] = {}


def best(fn: Callable[[T], object], reps: int, setup: Callable[[], T] = lambda: None) -> float:  # type: ignore[assignment,return-value]
    """Best wall time of ``fn(setup())`` over ``reps`` runs; ``setup`` and freeing the result are
    not timed. The process CPU time of that best run is kept in ``CPU[id(fn)]`` (on a loaded
    machine, MB per CPU-second of a one-thread run is the steadier figure)."""
    times = []
    for _ in range(reps):
        arg = setup()
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = fn(arg)  # kept until the clock stops: freeing millions of ints is not encoding
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        del out
    wall, cpu = min(times)
    CPU[id(fn)] = cpu
    return wall


def hf_tokenizer(model: Path):  # type: ignore[no-untyped-def]
    """HF tokenizers' conversion of the SentencePiece model (via transformers), or None."""
    try:
        from transformers import LlamaTokenizer
    except Exception as e:  # noqa: BLE001
        print(f"(HF tokenizers skipped: {e})", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as d:
        os.symlink(model.resolve(), Path(d) / "tokenizer.model")
        try:
            t = LlamaTokenizer.from_pretrained(d, legacy=True, add_bos_token=False, add_eos_token=False)
        except Exception as e:  # noqa: BLE001
            print(f"(HF conversion failed: {e})", file=sys.stderr)
            return None
    return t._tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="baichuan-7b", help="model name in ../shared/spm-models, or a path")
    ap.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    ap.add_argument("--limit-mb", type=float, default=0.0, help="use only the first N MB of text (0 = all)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--long-mb", type=float, default=6.5, help="size of the single long line")
    ap.add_argument("--short-mb", type=float, default=0.3, help="size of the short line")
    ap.add_argument("--no-hf", action="store_true")
    args = ap.parse_args(argv)

    import sentencepiece as spm

    path = Path(args.model) if Path(args.model).is_file() else model_path(args.model)
    texts = eval_texts(args.eval_dir)
    if args.limit_mb:
        out, n = [], 0
        for t in texts:
            n += len(t.encode())
            out.append(t)
            if n >= args.limit_mb * 1e6:
                break
        texts = out
    mb = sum(len(t.encode()) for t in texts) / 1e6
    ncpu = os.cpu_count() or 1
    print(f"model {path.name}; corpus {len(texts)} texts, {mb:.1f} MB; {ncpu} CPUs; best of {args.reps}")

    sp = spm.SentencePieceProcessor(model_file=str(path))
    fresh = lambda: Tokenizer.from_file(path)  # noqa: E731  (a new tokenizer: cold chunk cache)
    rows: list[tuple[str, float, float]] = []

    def row(name: str, fn: Callable[[T], object], setup: Callable[[], T] = lambda: None) -> float:  # type: ignore[assignment]
        t = best(fn, args.reps, setup)
        rows.append((name, mb / t, mb / max(CPU[id(fn)], 1e-9)))
        return t

    sp1 = row("sentencepiece, 1 thread", lambda _: sp.encode(texts, num_threads=1))
    row(f"sentencepiece, {ncpu} threads", lambda _: sp.encode(texts, num_threads=-1))
    # One thread and all threads alternate (a 1-thread run, then an all-threads run, and so on),
    # so the machine's drift between runs hits both alike; each figure is still the best run.
    one = lambda t: t.encode_batch(texts, num_threads=1)  # noqa: E731
    alln = lambda t: t.encode_batch(texts)  # noqa: E731
    pairs: list[tuple[float, float]] = []
    for i in range(args.reps):
        got = {}
        for name, fn in ((("1", one), ("n", alln)) if i % 2 == 0 else (("n", alln), ("1", one))):
            got[name] = (best(fn, 1, fresh), CPU[id(fn)])
        pairs.append((got["1"], got["n"]))
    (ours1, cpu1), (oursn, cpun) = min(p[0] for p in pairs), min(p[1] for p in pairs)
    rows.append(("ours, 1 thread (cold cache)", mb / ours1, mb / max(cpu1, 1e-9)))
    rows.append((f"ours encode_batch, {ncpu} threads (cold cache)", mb / oursn, mb / max(cpun, 1e-9)))
    pair_ratio = statistics.median(a[0] / b[0] for a, b in pairs)
    tok = Tokenizer.from_file(path)
    tok.encode_batch(texts, num_threads=1)
    row("ours, 1 thread (warm cache)", lambda _: tok.encode_batch(texts, num_threads=1))

    hf_note = ""
    hf = None if args.no_hf else hf_tokenizer(path)
    if hf is not None:
        row(f"HF tokenizers (converted), batch, {ncpu} threads", lambda _: hf.encode_batch(texts, add_special_tokens=False))
        ref = sp.encode(texts)
        got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        same = sum(a == b for a, b in zip(ref, got))
        hf_note = f"HF tokenizers identical ids on {same}/{len(texts)} texts ({100 * same / len(texts):.1f}%)"

    print()
    print(f"{'encoder':50s} {'MB/s':>7s} {'vs sp 1t':>9s} {'MB/CPU-s':>9s} {'vs sp 1t':>9s}")
    for name, v, c in rows:
        print(f"{name:50s} {v:7.1f} {v / rows[0][1]:8.2f}x {c:9.1f} {c / rows[0][2]:8.2f}x")
    print(f"\nspeed of ours on {ncpu} threads / ours on 1 thread (wall): {ours1 / oursn:.2f}x best runs, "
          f"{pair_ratio:.2f}x median of {len(pairs)} back-to-back pairs")
    print(f"speed of ours / sentencepiece, 1 thread each (wall): {sp1 / ours1:.2f}x")
    if hf_note:
        print(hf_note)

    line = " ".join(t.replace("\n", " ") for t in texts)
    data = line.encode()
    if len(data) < args.long_mb * 1e6:
        data = (data + b" ") * int(args.long_mb * 1e6 / len(data) + 1)
    long_line = data[: int(args.long_mb * 1e6)].decode("utf-8", "ignore")
    short_line = data[: int(args.short_mb * 1e6)].decode("utf-8", "ignore")
    lmb, smb = len(long_line.encode()) / 1e6, len(short_line.encode()) / 1e6
    warm_tok = fresh()
    warm_tok.encode(long_line)
    print("\nsingle line, one encode call (ours: a fresh tokenizer per run, cold cache, load not timed;")
    print("warm: a tokenizer that has seen the long line once):")
    print(f"{'encoder':20s} {f'{smb:.1f} MB line':>14s} {f'{lmb:.1f} MB line':>14s} {'long/short':>11s}")
    for name, enc, setup in (
        ("sentencepiece", lambda s: lambda _: sp.encode(s), lambda: None),
        ("ours", lambda s: lambda t: t.encode(s), fresh),
        ("ours (warm cache)", lambda s: lambda t: t.encode(s), lambda: warm_tok),
    ):
        ts = best(enc(short_line), args.reps, setup)
        tl = best(enc(long_line), args.reps, setup)
        print(f"{name:20s} {smb / ts:10.1f} MB/s {lmb / tl:10.1f} MB/s {(lmb / tl) / (smb / ts):10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
