"""The benchmark registry owns each benchmark's summary columns and how they aggregate (no data, no
model: synthetic results). The columns are those docs/evaluation.md lists; the CLI's --task
choices are the registry's names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from baichuan.evaluation.benchmarks import BENCHMARKS, TASKS, get_benchmark
from baichuan.evaluation.data import Question
from baichuan.evaluation.report import summary_columns
from baichuan.evaluation.results import EvalResult, PromptItem, SubjectResult

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
# two subjects each benchmark knows, in one category of its summary
SUBJECTS = {
    "ceval": ("college_physics", "operating_system"),  # STEM; college_physics is C-Eval Hard
    "mmlu": ("college_physics", "astronomy"),  # STEM
    "cmmlu": ("astronomy", "genetics"),  # STEM
    "gaokao": ("biology", "physics"),
    "agieval": ("sat-math", "logiqa-en"),
}


def _subject(name: str, correct: list[bool]) -> SubjectResult:
    items = [PromptItem(Question(name, str(i), "q", ("a", "b", "c", "d"), "A"), "p", [1], 5)
             for i in range(len(correct))]
    preds = ["A" if c else "B" for c in correct]
    zeros = np.zeros((len(items), 4), dtype=np.float32)
    return SubjectResult(name, items, zeros, zeros, preds)


def _result(task: str, split: str = "test") -> EvalResult:
    """One subject with 1 of 1 right, one with 0 of 3: subject mean 0.5, question-weighted 0.25."""
    a, b = SUBJECTS[task]
    return EvalResult(task, split, 5, "m", [_subject(a, [True]), _subject(b, [False, False, False])])


def _documented_columns() -> dict[str, list[str]]:
    rows = re.findall(r"^\| ([a-z, ]+) \| ([^|]+) \| [^|]+ \|$", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    columns = {}
    for tasks, cols in rows:
        names = [c.strip() for c in re.sub(r"\s+\(.*?\)", "", cols).split(",")]
        for task in tasks.split(","):
            columns[task.strip()] = names
    return columns


def test_registry_names_the_tasks_and_the_cli_offers_them() -> None:
    from baichuan.cli import build_parser

    assert TASKS == tuple(BENCHMARKS) == ("ceval", "mmlu", "cmmlu", "gaokao", "agieval")
    assert all(get_benchmark(t).name == t for t in TASKS)
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert isinstance(commands, dict)
    sub = commands["eval"]
    assert next(a for a in sub._actions if a.dest == "task").choices == TASKS


@pytest.mark.parametrize("task", TASKS)
def test_columns_are_the_documented_ones(task: str) -> None:
    assert [c for c, _ in summary_columns(_result(task))] == _documented_columns()[task]


@pytest.mark.parametrize(("task", "average"), [("ceval", 0.5), ("mmlu", 0.25), ("cmmlu", 0.5),
                                                ("gaokao", 0.25), ("agieval", 0.25)])
def test_each_benchmark_aggregates_as_upstream(task: str, average: float) -> None:
    """C-Eval and CMMLU average subjects, the others questions (docs/evaluation.md's table)."""
    cols = dict(summary_columns(_result(task)))
    assert cols["Average"] == average
    if task == "ceval":
        assert cols["STEM"] == 0.5 and cols["Avg(Hard)"] == 1.0 and np.isnan(cols["Humanities"])
    if task in ("mmlu", "cmmlu"):
        assert cols["STEM"] == average


def test_only_ceval_test_has_a_submission(tmp_path: Path) -> None:
    from baichuan.evaluation.report import write_outputs

    assert {t: get_benchmark(t).submission_split for t in TASKS} == {
        "ceval": "test", "mmlu": None, "cmmlu": None, "gaokao": None, "agieval": None}
    for task, split in [("ceval", "test"), ("ceval", "val"), ("mmlu", "test")]:
        paths = write_outputs(_result(task, split), tmp_path / f"{task}-{split}")
        assert ("submission" in paths) == (task == "ceval" and split == "test")
