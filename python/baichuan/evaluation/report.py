"""Outputs of an evaluation run: per-subject CSV/JSON, the Markdown summary laid out like upstream's
tables, a bar-chart PNG and, for a benchmark's submission split (C-Eval test), the submission JSON.

The summary columns and how they aggregate belong to each benchmark (``Benchmark.columns``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from baichuan.evaluation.benchmarks import get_benchmark
from baichuan.evaluation.data import LETTERS
from baichuan.evaluation.results import EvalResult, SubjectResult, question_mean


def summary_columns(result: EvalResult) -> list[tuple[str, float]]:
    """(column, accuracy) pairs in upstream's table order, as the run's benchmark defines them."""
    return get_benchmark(result.task).columns(result.answered)


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
        (f"{result.questions} questions in {len(result.subjects)} subjects; "
         f"question-weighted accuracy {_pct(question_mean(result.answered))}; "
         f"{result.seconds:.1f} s ({result.questions / max(result.seconds, 1e-9):.1f} questions/s)."),
    ]
    if not result.answered:
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

    subs = result.answered
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
    if result.answered:
        paths["plot"] = out / "accuracy.png"
        plot(result, paths["plot"])
    if result.split == get_benchmark(result.task).submission_split:
        paths["submission"] = out / "submission.json"
        paths["submission"].write_text(
            json.dumps(submission(result), ensure_ascii=False, indent=1), encoding="utf-8"
        )
    return paths


def format_columns(cols: Sequence[tuple[str, float]]) -> str:
    return "  ".join(f"{c}: {_pct(v)}" for c, v in cols)
