"""Readers for the benchmark files: C-Eval, MMLU, CMMLU (CSV), AGIEval (JSONL), GAOKAO-Bench (JSON).

Every reader returns :class:`Question` records with the text exactly as the upstream evaluation
script would see it, and raises :class:`EvalDataError` naming the file and the row for anything
malformed (wrong field count, missing header column, unknown answer, unparsable JSON).

Variants accepted (see ``../shared/eval-data/PROVENANCE.md``):

- MMLU with or without a header row (``question,A,B,C,D,answer`` or
  ``question,choice0,...,answer``) and answers as letters ``A``-``D`` or indexes ``0``-``3``.
- CMMLU with its unnamed pandas index column (``,Question,A,B,C,D,Answer``) or without it.
- Quoted multi-line fields, CRLF inside quotes (Python's ``csv`` module with ``newline=""``).
"""

from __future__ import annotations

import ast
import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from baichuan.errors import BaichuanError

LETTERS = "ABCDEFG"

# pandas.read_csv's default NA strings: upstream's MMLU/CMMLU scripts read CSVs with pandas, so a
# cell such as "None" reaches the prompt as "nan" ("{}".format(float("nan"))). We reproduce that.
PANDAS_NA_STRINGS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)


class EvalDataError(BaichuanError, ValueError):
    """A benchmark file is missing or malformed; the message names the file (and row)."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice item. ``answer`` is a letter, or None where the split has no answers."""

    subject: str
    qid: str
    question: str
    choices: tuple[str, ...]
    answer: str | None
    passage: str = ""
    source: str = field(default="", compare=False)  # "file:row", for messages

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]


@dataclass
class SubjectData:
    """The few-shot pool (in prompt order) and the questions to score for one subject."""

    subject: str
    shots: list[Question]
    questions: list[Question]


def _pandas_cell(value: str) -> str:
    return "nan" if value in PANDAS_NA_STRINGS else value


def read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """All records of a CSV file with the line number each starts on (1-based)."""
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, strict=True)
            start = 1
            for record in reader:
                rows.append((start, record))
                start = reader.line_num + 1
    except csv.Error as exc:
        raise EvalDataError(f"{path}: row starting at line {start}: malformed CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise EvalDataError(f"{path}: not UTF-8 ({exc})") from exc
    return rows


def _check_answer(path: Path, line: int, raw: str, n_choices: int, allow_index: bool) -> str:
    value = raw.strip().upper()
    letters = LETTERS[:n_choices]
    if len(value) == 1 and value in letters:
        return value
    if allow_index and value.isdigit() and int(value) < n_choices:
        return letters[int(value)]
    expect = f"one of {', '.join(letters)}" + (f" or 0-{n_choices - 1}" if allow_index else "")
    raise EvalDataError(f"{path}: row at line {line}: answer {raw!r} is not {expect}")


def _check_width(path: Path, line: int, record: Sequence[str], width: int) -> None:
    if len(record) != width:
        raise EvalDataError(
            f"{path}: row at line {line}: expected {width} fields, found {len(record)}"
        )


def _pandas_question(
    path: Path, line: int, subject: str, qid: str, cells: Sequence[str], allow_index: bool
) -> Question:
    """``question, A, B, C, D, answer`` cells as pandas would have read them (MMLU, CMMLU)."""
    return Question(
        subject=subject,
        qid=qid,
        question=_pandas_cell(cells[0]),
        choices=tuple(_pandas_cell(c) for c in cells[1:5]),
        answer=_check_answer(path, line, cells[5], 4, allow_index=allow_index),
        source=f"{path}:{line}",
    )


# ------------------------------------------------------------------------------------- C-Eval
def read_ceval_csv(path: Path, subject: str, need_answer: bool) -> list[Question]:
    """``id,question,A,B,C,D[,answer[,explanation]]`` with a header row (the official release)."""
    rows = read_csv_rows(path)
    if not rows:
        raise EvalDataError(f"{path}: empty file")
    header = [h.strip() for h in rows[0][1]]
    required = ["id", "question", "A", "B", "C", "D"] + (["answer"] if need_answer else [])
    missing = [c for c in required if c not in header]
    if missing:
        raise EvalDataError(f"{path}: header {header} lacks column(s) {missing}")
    col = {name: header.index(name) for name in header}
    out = []
    for line, record in rows[1:]:
        _check_width(path, line, record, len(header))
        answer = None
        if "answer" in col and (need_answer or record[col["answer"]].strip()):
            answer = _check_answer(path, line, record[col["answer"]], 4, allow_index=False)
        out.append(
            Question(
                subject=subject,
                qid=record[col["id"]],
                question=record[col["question"]],
                choices=tuple(record[col[c]] for c in "ABCD"),
                answer=answer,
                source=f"{path}:{line}",
            )
        )
    return out


# --------------------------------------------------------------------------------------- MMLU
_MMLU_HEADERS = (
    ("question", "a", "b", "c", "d", "answer"),
    ("question", "choice0", "choice1", "choice2", "choice3", "answer"),
)


def read_mmlu_csv(path: Path, subject: str) -> list[Question]:
    """Hendrycks' layout ``question,A,B,C,D,answer``, with or without a header row, answers as
    letters or 0-3 indexes. Cells go through pandas' NA rule, as in upstream's script."""
    rows = read_csv_rows(path)
    if rows and tuple(c.strip().lower() for c in rows[0][1]) in _MMLU_HEADERS:
        rows = rows[1:]
    out = []
    for i, (line, record) in enumerate(rows):
        _check_width(path, line, record, 6)
        out.append(_pandas_question(path, line, subject, str(i), record, allow_index=True))
    return out


# -------------------------------------------------------------------------------------- CMMLU
def read_cmmlu_csv(path: Path, subject: str) -> list[Question]:
    """``,Question,A,B,C,D,Answer`` (pandas index column first) or without the index column."""
    rows = read_csv_rows(path)
    if not rows:
        raise EvalDataError(f"{path}: empty file")
    header = [h.strip() for h in rows[0][1]]
    if header == ["", "Question", "A", "B", "C", "D", "Answer"]:
        offset = 1
    elif header == ["Question", "A", "B", "C", "D", "Answer"]:
        offset = 0
    else:
        raise EvalDataError(
            f"{path}: header {header} is not ',Question,A,B,C,D,Answer' (CMMLU layout)"
        )
    out = []
    for i, (line, record) in enumerate(rows[1:]):
        _check_width(path, line, record, len(header))
        qid = record[0] if offset else str(i)
        out.append(_pandas_question(path, line, subject, qid, record[offset:], allow_index=False))
    return out


# ------------------------------------------------------------------------------------ AGIEval
def read_agieval_jsonl(path: Path, subject: str) -> list[Question]:
    """AGIEval v1 JSONL. Keeps single-answer multiple-choice items (``label`` one letter);
    items whose label is a list (multiple answers) or null (cloze) are left out."""
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path}: line {line_no}: invalid JSON: {exc}") from exc
            if not isinstance(item, dict) or "question" not in item or "options" not in item:
                raise EvalDataError(f"{path}: line {line_no}: expected an object with question/options")
            label = item.get("label")
            options = item.get("options") or []
            if not isinstance(label, str) or not options:
                continue  # cloze (null label) or multiple answers (list label)
            compact = label.replace(" ", "").replace(",", "").strip()
            if len(compact) > 1 and all(c in LETTERS for c in compact):
                continue  # multiple answers written as one string ("AD", "A B D")
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise EvalDataError(f"{path}: line {line_no}: options must be a list of strings")
            answer = _check_answer(path, line_no, label, len(options), allow_index=False)
            out.append(
                Question(
                    subject=subject,
                    qid=str(line_no - 1),
                    question=str(item["question"]),
                    choices=tuple(options),
                    answer=answer,
                    passage=item.get("passage") or "",
                    source=f"{path}:{line_no}",
                )
            )
    return out


def read_agieval_demos(path: Path, subject: str) -> list[Question]:
    """AGIEval's official ``data/few_shot_prompts.csv``: a header row of task names, then records
    alternating a demo (a Python dict literal: passage/question/options/label) and its explanation;
    upstream reads the demo records 1, 3, 5, 7, 9. Literals are parsed with ``ast.literal_eval``
    (never executed). ``sat-en-without-passage`` uses ``sat-en``'s demos without the passage."""
    rows = read_csv_rows(path)
    if not rows:
        raise EvalDataError(f"{path}: empty file")
    header = rows[0][1]
    column = "sat-en" if subject == "sat-en-without-passage" else subject
    if column not in header:
        raise EvalDataError(f"{path}: no column {column!r} in the header")
    col = header.index(column)
    out: list[Question] = []
    for n, (line, record) in enumerate(rows[1:]):
        if n >= 10:
            break  # upstream reads records 1-10: five demos and their explanations
        if n % 2 or col >= len(record) or not record[col].strip():
            continue  # explanation records, empty cells
        try:
            demo = ast.literal_eval(record[col])
        except (ValueError, SyntaxError) as exc:
            raise EvalDataError(f"{path}: record at line {line}, column {column}: not a literal ({exc})") from exc
        if not isinstance(demo, dict) or "question" not in demo:
            raise EvalDataError(f"{path}: record at line {line}, column {column}: expected a dict with a question")
        label = demo.get("label")
        out.append(
            Question(
                subject=subject,
                qid=f"demo{len(out)}",
                question=str(demo["question"]),
                choices=tuple(demo.get("options") or ()),
                answer=label if isinstance(label, str) else "".join(label or []),
                passage="" if subject == "sat-en-without-passage" else (demo.get("passage") or ""),
                source=f"{path}:{line}",
            )
        )
    return out


# ------------------------------------------------------------------------------- GAOKAO-Bench
def read_gaokao_json(path: Path, subject: str) -> list[Question]:
    """GAOKAO-Bench objective file ``{"keywords", "example": [...]}``. Keeps single-answer items
    (``answer`` a one-letter list, A-D); the options are embedded in the question text."""
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{path}: invalid JSON: {exc}") from exc
    examples = doc.get("example") if isinstance(doc, dict) else None
    if not isinstance(examples, list):
        raise EvalDataError(f"{path}: expected an object with an 'example' list")
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or "question" not in ex or "answer" not in ex:
            raise EvalDataError(f"{path}: example {i}: expected question and answer")
        ans = ex["answer"]
        if not (isinstance(ans, list) and len(ans) == 1 and ans[0] in ("A", "B", "C", "D")):
            continue
        out.append(
            Question(
                subject=subject,
                qid=str(ex.get("index", i)),
                question=str(ex["question"]),
                choices=("", "", "", ""),  # embedded in the question text
                answer=ans[0],
                source=f"{path}:example {i}",
            )
        )
    return out


def require_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise EvalDataError(f"{p}: {what} directory not found")
    return p
