"""Outputs of an evaluation run: per-subject CSV/JSON, the Markdown summary laid out like upstream's
tables, a bar-chart PNG and, for the C-Eval test split, the submission JSON.

Aggregation rules (as upstream computes them):

- C-Eval: every column is the mean of its subjects' accuracies (C-Eval's leaderboard averages
  subjects); Avg(Hard) over the eight C-Eval Hard subjects.
- MMLU: question-weighted, as ``evaluate_mmlu.py`` (``np.mean(np.concatenate(cors))``).
- CMMLU: mean of subject accuracies per category and overall, as CMMLU's ``get_results``.
- AGIEval, Gaokao: question-weighted average, plus one row per subject.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from baichuan.evaluation.data import LETTERS
from baichuan.evaluation.runner import EvalResult, SubjectResult
from baichuan.evaluation.subjects import (
    CEVAL_HARD,
    CEVAL_SUBJECTS,
    CMMLU_CATEGORIES,
    CMMLU_SUBJECTS,
    MMLU_CATEGORIES,
    MMLU_COLUMNS,
    MMLU_SUBCATEGORIES,
)


def _macro(results: Iterable[SubjectResult]) -> float:
    accs = [r.accuracy for r in results if r.items]
    return float(np.mean(accs)) if accs else float("nan")


def _micro(results: Iterable[SubjectResult]) -> float:
    cors = [c for r in results for c in r.correct]
    return float(np.mean(cors)) if cors else float("nan")


def summary_columns(result: EvalResult) -> list[tuple[str, float]]:
    """(column, accuracy) pairs in upstream's table order."""
    subs = [r for r in result.subjects if r.has_answers]
    if result.task == "ceval":
        def cat(name: str) -> float:
            return _macro(r for r in subs if CEVAL_SUBJECTS[r.subject][1] == name)

        return [
            ("Average", _macro(subs)),
            ("Avg(Hard)", _macro(r for r in subs if r.subject in CEVAL_HARD)),
            ("STEM", cat("STEM")),
            ("Social Sciences", cat("Social Science")),
            ("Humanities", cat("Humanities")),
            ("Others", cat("Other")),
        ]
    if result.task == "mmlu":
        cols = []
        for key in ("humanities", "social sciences", "STEM", "other (business, health, misc.)"):
            members = MMLU_CATEGORIES[key]
            cols.append((MMLU_COLUMNS[key], _micro(
                r for r in subs if MMLU_SUBCATEGORIES.get(r.subject) in members
            )))
        cols.append(("Average", _micro(subs)))
        return cols
    if result.task == "cmmlu":
        cols = []
        for key, members in CMMLU_CATEGORIES.items():
            cols.append((key, _macro(
                r for r in subs if set(CMMLU_SUBJECTS[r.subject][1]) & set(members)
            )))
        cols.append(("Average", _macro(subs)))
        return cols
    return [("Average", _micro(subs))]


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def summary_markdown(result: EvalResult) -> str:
    cols = summary_columns(result)
    lines = [
        f"## {result.task} ({result.split} split, {result.shot}-shot)",
        "",
        "| Model | " + " | ".join(c for c, _ in cols) + " |",
        "|---|" + "---|" * len(cols),
        f"| {result.model_name} | " + " | ".join(_pct(v) for _, v in cols) + " |",
        "",
        f"{result.questions} questions in {len(result.subjects)} subjects; "
        f"question-weighted accuracy {_pct(_micro(r for r in result.subjects if r.has_answers))}; "
        f"{result.seconds:.1f} s ({result.questions / max(result.seconds, 1e-9):.1f} questions/s).",
    ]
    if not any(r.has_answers for r in result.subjects):
        lines.append("This split has no answers: submit `submission.json` to the benchmark's site.")
    lines += ["", "| Subject | Questions | Accuracy |", "|---|---|---|"]
    for r in result.subjects:
        lines.append(f"| {r.subject} | {len(r.items)} | {_pct(r.accuracy)} |")
    return "\n".join(lines) + "\n"


def subject_rows(r: SubjectResult) -> list[dict[str, object]]:
    rows = []
    n_letters = r.probs.shape[1]
    for i, it in enumerate(r.items):
        row: dict[str, object] = {
            "id": it.question.qid,
            "answer": it.question.answer or "",
            "prediction": r.preds[i],
            "correct": "" if it.question.answer is None else int(r.preds[i] == it.question.answer),
            "n_shots": it.n_shots,
            "tokens": len(it.ids),
        }
        for j in range(n_letters):
            row[f"prob_{LETTERS[j]}"] = round(float(r.probs[i, j]), 6)
        for j in range(n_letters):
            row[f"logit_{LETTERS[j]}"] = round(float(r.logits[i, j]), 5)
        rows.append(row)
    return rows


def write_subject(r: SubjectResult, folder: Path) -> None:
    rows = subject_rows(r)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{r.subject}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
    with open(folder / f"{r.subject}.json", "w", encoding="utf-8") as fh:
        json.dump({"subject": r.subject, "accuracy": None if math.isnan(r.accuracy) else r.accuracy,
                   "questions": rows}, fh, ensure_ascii=False, indent=1)


def submission(result: EvalResult) -> dict[str, dict[str, str]]:
    """C-Eval's submission format: ``{subject: {id: letter}}``."""
    return {r.subject: {it.question.qid: p for it, p in zip(r.items, r.preds)} for r in result.subjects}


def plot(result: EvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subs = [r for r in result.subjects if r.has_answers]
    cols = summary_columns(result)
    fig_h = max(4.0, 0.18 * len(subs) + 1.5)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(14, fig_h), gridspec_kw={"width_ratios": [1, 2.2]}
    )
    names = [c for c, _ in cols]
    vals = [0.0 if math.isnan(v) else 100 * v for _, v in cols]
    ax1.bar(range(len(names)), vals, color="#4c72b0")
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax1.set_ylabel("accuracy (%)")
    ax1.set_ylim(0, 100)
    chance = 100 / max(1, max((len(it.question.choices) for r in subs for it in r.items), default=4))
    ax1.axhline(chance, color="grey", linestyle="--", linewidth=1)
    ax1.set_title(f"{result.task} {result.split}, {result.shot}-shot: {result.model_name}")
    order = sorted(subs, key=lambda r: r.accuracy)
    ax2.barh(range(len(order)), [100 * r.accuracy for r in order], color="#55a868")
    ax2.set_yticks(range(len(order)), [r.subject for r in order], fontsize=6)
    ax2.axvline(chance, color="grey", linestyle="--", linewidth=1)
    ax2.set_xlim(0, 100)
    ax2.set_xlabel("accuracy (%) per subject")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: EvalResult, out: Path) -> dict[str, Path]:
    """Write everything under ``out``; returns the paths written by kind."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    folder = out / "subjects"
    for r in result.subjects:
        write_subject(r, folder)
    paths["subjects"] = folder
    summary = {
        "task": result.task, "split": result.split, "shot": result.shot, "model": result.model_name,
        "questions": result.questions, "seconds": result.seconds,
        "columns": {c: (None if math.isnan(v) else v) for c, v in summary_columns(result)},
        "subjects": {r.subject: {"questions": len(r.items),
                                 "accuracy": None if math.isnan(r.accuracy) else r.accuracy}
                     for r in result.subjects},
        "predictions": submission(result),
    }
    paths["results"] = out / "results.json"
    paths["results"].write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    paths["summary"] = out / "summary.md"
    paths["summary"].write_text(summary_markdown(result), encoding="utf-8")
    if any(r.has_answers for r in result.subjects):
        paths["plot"] = out / "accuracy.png"
        plot(result, paths["plot"])
    if result.task == "ceval" and result.split == "test":
        paths["submission"] = out / "submission.json"
        paths["submission"].write_text(
            json.dumps(submission(result), ensure_ascii=False, indent=1), encoding="utf-8"
        )
    return paths


def format_columns(cols: Sequence[tuple[str, float]]) -> str:
    return "  ".join(f"{c}: {_pct(v)}" for c, v in cols)
