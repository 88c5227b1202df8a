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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tokenizer_corpus import EVAL_DIR, eval_texts, model_path  # noqa: E402

from baichuan import Tokenizer  # noqa: E402


def best(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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
    rows: list[tuple[str, float]] = []
    sp1 = best(lambda: sp.encode(texts, num_threads=1), args.reps)
    rows.append(("sentencepiece, 1 thread", mb / sp1))
    spn = best(lambda: sp.encode(texts, num_threads=-1), args.reps)
    rows.append((f"sentencepiece, {ncpu} threads", mb / spn))
    ours1 = best(lambda: Tokenizer.from_file(path).encode_batch(texts, num_threads=1), args.reps)
    rows.append(("ours, 1 thread (cold cache)", mb / ours1))
    oursn = best(lambda: Tokenizer.from_file(path).encode_batch(texts), args.reps)
    rows.append((f"ours encode_batch, {ncpu} threads (cold cache)", mb / oursn))
    tok = Tokenizer.from_file(path)
    tok.encode_batch(texts, num_threads=1)
    warm = best(lambda: tok.encode_batch(texts, num_threads=1), args.reps)
    rows.append(("ours, 1 thread (warm cache)", mb / warm))

    hf_note = ""
    hf = None if args.no_hf else hf_tokenizer(path)
    if hf is not None:
        hft = best(lambda: hf.encode_batch(texts, add_special_tokens=False), args.reps)
        rows.append((f"HF tokenizers (converted), batch, {ncpu} threads", mb / hft))
        ref = sp.encode(texts)
        got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        same = sum(a == b for a, b in zip(ref, got))
        hf_note = f"HF tokenizers identical ids on {same}/{len(texts)} texts ({100 * same / len(texts):.1f}%)"

    print()
    print(f"{'encoder':52s} {'MB/s':>8s} {'vs sp 1t':>9s}")
    for name, v in rows:
        print(f"{name:52s} {v:8.1f} {v / rows[0][1]:8.2f}x")
    print(f"\nours {ncpu} threads / ours 1 thread: {ours1 / oursn:.2f}x")
    if hf_note:
        print(hf_note)

    line = " ".join(t.replace("\n", " ") for t in texts)
    data = line.encode()
    if len(data) < args.long_mb * 1e6:
        data = (data + b" ") * int(args.long_mb * 1e6 / len(data) + 1)
    long_line = data[: int(args.long_mb * 1e6)].decode("utf-8", "ignore")
    short_line = long_line[: len(long_line) * args.short_mb // args.long_mb if False else None]
    short_line = data[: int(args.short_mb * 1e6)].decode("utf-8", "ignore")
    lmb, smb = len(long_line.encode()) / 1e6, len(short_line.encode()) / 1e6
    print(f"\nsingle line, one call (fresh tokenizer each run):")
    print(f"{'encoder':20s} {'%.1f MB line' % smb:>14s} {'%.1f MB line' % lmb:>14s} {'long/short':>11s}")
    for name, enc in (
        ("sentencepiece", lambda s: sp.encode(s)),
        ("ours", lambda s: Tokenizer.from_file(path).encode(s)),
    ):
        ts = best(lambda: enc(short_line), args.reps)
        tl = best(lambda: enc(long_line), args.reps)
        print(f"{name:20s} {smb / ts:10.1f} MB/s {lmb / tl:10.1f} MB/s {(lmb / tl) / (smb / ts):10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
