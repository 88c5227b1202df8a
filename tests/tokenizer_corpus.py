"""Shared helpers for the tokenizer tests and ``scripts/bench_tokenizer.py``: where ``shared/``
is, and every text field of the evaluation data read with real parsers (csv, json)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS_DIR = SHARED / "spm-models"
EVAL_DIR = SHARED / "eval-data"

BPE_MODELS = [
    "baichuan-7b",
    "llama2",
    "chinese-llama2",
    "internlm-7b",
    "mistral-7b-v1",
    "mistral-v3",
    "chatglm2-6b",
    "baichuan-m1-14b",
]
UNIGRAM_MODELS = ["chatglm-6b-ice-unigram", "spm-test-unigram"]


def model_path(name: str) -> Path:
    return MODELS_DIR / f"{name}.model"


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def eval_texts(root: Path = EVAL_DIR) -> list[str]:
    """Every non-empty text field (questions, choices, answers, explanations, passages) of the
    CSV / JSON / JSONL files under ``root``, in a fixed order. CSV header rows are skipped."""
    out: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                rows = csv.reader(fh)
                next(rows, None)
                for row in rows:
                    out.extend(c for c in row if c)
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        out.extend(s for s in _strings(json.loads(line)) if s)
        elif path.suffix == ".json":
            with path.open(encoding="utf-8") as fh:
                out.extend(s for s in _strings(json.load(fh)) if s)
    return out
