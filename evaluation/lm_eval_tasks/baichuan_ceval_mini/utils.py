"""Data loader of the ``baichuan_ceval_mini`` lm-evaluation-harness task: the C-Eval-format CSV in
``data/val/`` next to this file, whatever the working directory (no download: works offline)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
SUBJECT = "high_school_geography"


def load_val(**_: Any) -> Any:
    """The val questions as ``DatasetDict({"test": ...})`` (columns id, question, A-D, answer)."""
    import datasets

    with open(DATA / "val" / f"{SUBJECT}_val.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
