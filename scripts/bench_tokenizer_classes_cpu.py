#!/usr/bin/env python3
"""Process-CPU-time variant of ``bench_tokenizer_classes.py``: the same benchmark with ``--clock
process --json`` (one JSON line tagged with the package's path; see that script's docstring).

    python scripts/bench_tokenizer_classes_cpu.py --reps 7
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tokenizer_classes  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(bench_tokenizer_classes.main(["--clock", "process", "--json", *sys.argv[1:]]))
