"""What an evaluation run produces: one prompt per question, one result per subject, one result per
benchmark run, and the accuracy averages the summaries are made of.

Torch-free: ``runner`` fills these in, ``benchmarks`` aggregates them into summary columns and
``report`` writes them out; none of those needs another of them for these types. numpy is imported
only when a mean is taken: the CLI imports the benchmark registry, and so this module, to build its
parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from baichuan.evaluation.data import Question

if TYPE_CHECKING:
    import numpy as np


def _mean(values: Sequence[float]) -> float:
    """``np.mean`` (pairwise summation: the same float as every earlier run), nan when empty."""
    import numpy as np

    return float(np.mean(values)) if len(values) else float("nan")


@dataclass
class PromptItem:
    """One question as scored: its prompt text and ids, and the demonstrations it got."""

    question: Question
    text: str
    ids: list[int]
    n_shots: int
    shot_ids: tuple[str, ...] = ()  # which demonstrations (CMMLU may drop any, not just the last)


@dataclass
class SubjectResult:
    subject: str
    items: list[PromptItem]
    logits: np.ndarray  # (N, n_letters), raw next-token logits of the candidate letters
    probs: np.ndarray  # softmax over each question's own letters (zeros beyond)
    preds: list[str]

    @property
    def answers(self) -> list[str | None]:
        return [it.question.answer for it in self.items]

    @property
    def has_answers(self) -> bool:
        return all(a is not None for a in self.answers)

    @property
    def correct(self) -> list[bool]:
        return [p == a for p, a in zip(self.preds, self.answers)]

    @property
    def accuracy(self) -> float:
        return _mean(self.correct) if self.has_answers else float("nan")


@dataclass
class ScoreStats:
    """What the scorer ran: prompts, tokens through the shared prefix and the suffixes, forwards."""

    prompts: int = 0
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    padded_tokens: int = 0
    forwards: int = 0


@dataclass
class EvalResult:
    """One benchmark run: ``task`` is the benchmark's registry name."""

    task: str
    split: str
    shot: int
    model_name: str
    subjects: list[SubjectResult]
    seconds: float = 0.0
    stats: ScoreStats = field(default_factory=ScoreStats)

    @property
    def questions(self) -> int:
        return sum(len(s.items) for s in self.subjects)

    @property
    def answered(self) -> list[SubjectResult]:
        """The subjects whose split has answers (the ones accuracies are computed over)."""
        return [r for r in self.subjects if r.has_answers]


def subject_mean(results: Iterable[SubjectResult]) -> float:
    """Mean of the subjects' accuracies (every subject weighs the same)."""
    return _mean([r.accuracy for r in results if r.items])


def question_mean(results: Iterable[SubjectResult]) -> float:
    """Question-weighted accuracy (every question weighs the same)."""
    return _mean([c for r in results for c in r.correct])
