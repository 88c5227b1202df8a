#!/usr/bin/env python3
"""Process-CPU-time variant of ``bench_tokenizer_classes.py`` (steadier than wall time on a shared
machine): the same three corpora and the same calls (ours: a fresh tokenizer per run,
``encode_batch(texts, num_threads=1)``; sentencepiece: ``encode(texts, num_threads=1)``), ours and
sentencepiece alternating, ``time.process_time`` around each call; prints MB per CPU-second (medians)
and the median of the per-pair ratios, as one JSON line tagged with the ``baichuan`` package's path
(so that two builds can be compared by alternating processes, e.g. one with ``PYTHONPATH`` pointing
at another build of the package).

    python scripts/bench_tokenizer_classes_cpu.py --reps 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import baichuan  # noqa: E402
import bench_tokenizer_classes as classes  # noqa: E402
from baichuan import Tokenizer  # noqa: E402
from tokenizer_corpus import model_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="baichuan-7b")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--en-mb", type=float, default=4.0)
    args = ap.parse_args(argv)
    import sentencepiece as spm

    path = Path(args.model) if Path(args.model).is_file() else model_path(args.model)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    makers = {"zh-prose": classes.zh_prose, "zh-tech": classes.zh_tech, "en-code": lambda: classes.en_code(args.en_mb)}
    res = {}
    for name, make in makers.items():
        try:
            texts = make()
        except ImportError as e:
            res[name] = f"skipped: {e}"
            continue
        mb = sum(len(t.encode()) for t in texts) / 1e6
        if Tokenizer.from_file(path).encode_batch(texts, num_threads=1) != sp.encode(texts, num_threads=1):
            print(f"{name}: IDS DIFFER from sentencepiece")
            return 1
        ours, theirs = [], []
        for i in range(args.reps):
            for who in ("o", "s") if i % 2 == 0 else ("s", "o"):
                if who == "o":
                    tok = Tokenizer.from_file(path)
                    t0 = time.process_time()
                    out = tok.encode_batch(texts, num_threads=1)
                    ours.append(time.process_time() - t0)
                else:
                    t0 = time.process_time()
                    out = sp.encode(texts, num_threads=1)
                    theirs.append(time.process_time() - t0)
                del out
        res[name] = {
            "ours_mb_cpu_s": round(mb / statistics.median(ours), 1),
            "sp_mb_cpu_s": round(mb / statistics.median(theirs), 1),
            "ratio": round(statistics.median(b / a for a, b in zip(ours, theirs)), 2),
        }
    print(json.dumps({"package": str(Path(baichuan.__file__).parent), **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
