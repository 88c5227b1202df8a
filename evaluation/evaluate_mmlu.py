#!/usr/bin/env python3
"""Upstream-style entry point for MMLU (Baichuan-7B ``evaluation/evaluate_mmlu.py``, itself
hendrycks/test's ``evaluate.py``): same arguments and the same printed lines, run through
``baichuan.evaluation`` (upstream's prompt and shot-dropping rule, letter scoring, batched with a
shared-prefix KV cache).

    python evaluation/evaluate_mmlu.py -m MODEL_DIR -d ../shared/eval-data/mmlu -s results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from baichuan.evaluation.report import write_outputs
from baichuan.evaluation.runner import EvalConfig, run
from baichuan.evaluation.subjects import MMLU_CATEGORIES, MMLU_SUBCATEGORIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ntrain", "-k", type=int, default=5)
    parser.add_argument("--ngpu", "-g", type=int, default=1, help="accepted for compatibility; one device is used")
    parser.add_argument("--data_dir", "-d", type=str, default="data")
    parser.add_argument("--save_dir", "-s", type=str, default="results")
    parser.add_argument("--model", "-m", type=str, required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--subjects", nargs="+", default=None, help="(ours) a subset of subjects")
    parser.add_argument("--limit", type=int, default=None, help="(ours) first N questions per subject")
    args = parser.parse_args(argv)
    cfg = EvalConfig(task="mmlu", data_dir=args.data_dir, model=args.model, shot=args.ntrain,
                     batch_size=args.batch_size, max_length=args.max_length,
                     subjects=args.subjects, limit=args.limit)
    result = run(cfg)
    write_outputs(result, Path(args.save_dir) / f"results_{Path(args.model).name}")
    subcat: dict[str, list[bool]] = {}
    cat: dict[str, list[bool]] = {c: [] for c in MMLU_CATEGORIES}
    for s in result.subjects:
        print(f"Average accuracy {s.accuracy:.3f} - {s.subject}")
        sc = MMLU_SUBCATEGORIES.get(s.subject)
        subcat.setdefault(sc or "unknown", []).extend(s.correct)
        for c, members in MMLU_CATEGORIES.items():
            if sc in members:
                cat[c].extend(s.correct)
    for name, cors in subcat.items():
        print(f"Average accuracy {float(np.mean(cors)):.3f} - {name}")
    for name, cors in cat.items():
        if cors:
            print(f"Average accuracy {float(np.mean(cors)):.3f} - {name}")
    all_cors = [c for s in result.subjects for c in s.correct]
    print(f"Average accuracy: {float(np.mean(all_cors)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
