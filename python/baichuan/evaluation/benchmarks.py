"""The five benchmarks: where their files are, which shots they use, their prompt formats and how
their summary columns aggregate.

Each :class:`Benchmark` turns a subject's data into prompt strings byte-identical to the upstream
format it documents (docs/evaluation.md lists the sources). A prompt is always
``header(subject) + shot(s_1, 1) + ... + shot(s_k, k) + query(q, k)``, so every question of a
subject with the same shots shares the prefix ``header + shots``; the scorer caches it.

:data:`BENCHMARKS` is the registry: the CLI's ``--task`` choices and every task list come from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from baichuan.evaluation.data import (
    EvalDataError,
    Question,
    SubjectData,
    read_agieval_demos,
    read_agieval_jsonl,
    read_ceval_csv,
    read_cmmlu_csv,
    read_gaokao_json,
    read_mmlu_csv,
    require_dir,
)
from baichuan.evaluation.results import SubjectResult, question_mean, subject_mean
from baichuan.evaluation.subjects import (
    AGIEVAL_CHINESE_QA,
    AGIEVAL_DEFAULT,
    AGIEVAL_FIVE_OPTION,
    CEVAL_HARD,
    CEVAL_SUBJECTS,
    CMMLU_CATEGORIES,
    CMMLU_SUBJECTS,
    GAOKAO_FILES,
    MMLU_CATEGORIES,
    MMLU_COLUMNS,
    MMLU_SUBCATEGORIES,
)

# Seed of upstream's C-Eval dev shuffle (``dataset['dev'].shuffle(seed=123)``); we reuse it for
# the demo/test split of AGIEval and Gaokao, whose demos Baichuan did not publish.
SHUFFLE_SEED = 123
# AGIEval / Gaokao: this many items per subject are held out as the few-shot pool.
DEMO_POOL = 5

TokenCount = Callable[[str], int]
Columns = list[tuple[str, float]]


def datasets_shuffle_order(n: int, seed: int = SHUFFLE_SEED) -> list[int]:
    """The row order of ``datasets.Dataset.shuffle(seed=seed)`` on ``n`` rows: that method draws
    ``numpy.random.default_rng(seed).permutation(n)`` (checked against ``datasets`` in the tests)."""
    import numpy as np  # here, not at the top: the CLI imports this module to build its parser

    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


class Benchmark:
    """Base class: subclasses define files, headers and the two example formats."""

    name: str = ""
    # where the benchmark's files live under a shared data root such as ../shared/eval-data
    data_subdir: str = ""
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    # True where the benchmark's shot rule can drop shots before the prompt exceeds max_length
    budget_rule: bool = False
    # the split whose predictions go to the benchmark's site as submission.json (None: no such split)
    submission_split: str | None = None

    def subjects(self, data_dir: Path, split: str) -> list[str]:
        raise NotImplementedError

    def load(self, data_dir: Path, subject: str, split: str) -> SubjectData:
        raise NotImplementedError

    def header(self, subject: str) -> str:
        raise NotImplementedError

    def shot(self, q: Question, number: int) -> str:
        """The ``number``-th (1-based) demonstration, with its answer."""
        raise NotImplementedError

    def query(self, q: Question, n_shots: int) -> str:
        """The question to answer, ending where the answer letter is expected."""
        raise NotImplementedError

    def prompt(self, subject: str, shots: Sequence[Question], q: Question) -> str:
        return self.prefix(subject, shots) + self.query(q, len(shots))

    def prefix(self, subject: str, shots: Sequence[Question]) -> str:
        text = self.header(subject)
        for i, s in enumerate(shots):
            text += self.shot(s, i + 1)
        return text

    def fit_shots(
        self, subject: str, pool: Sequence[Question], q: Question, k: int, count: TokenCount,
        max_length: int,
    ) -> list[Question]:
        """Upstream MMLU's rule (also used for C-Eval, Gaokao): drop the last shot while the
        whole prompt is longer than ``max_length`` tokens."""
        shots = list(pool[:k])
        while shots and count(self.prompt(subject, shots, q)) > max_length:
            shots.pop()
        return shots

    def columns(self, answered: Sequence[SubjectResult]) -> Columns:
        """The summary table's (column, accuracy) pairs in upstream's order, over the subjects
        that have answers. Default (AGIEval, Gaokao): the question-weighted average."""
        return [("Average", question_mean(answered))]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise EvalDataError(f"{self.name}: split {split!r} not available (have {', '.join(self.splits)})")


def _stems(folder: Path, suffix: str) -> list[str]:
    if not folder.is_dir():
        raise EvalDataError(f"{folder}: directory not found")
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


def _check_subject(subject: str, known: Sequence[str] | dict, bench: str) -> None:
    if subject not in known:
        raise EvalDataError(f"{bench}: unknown subject {subject!r}")


def _options(q: Question) -> str:
    """``\nA. {choice}`` for each choice (C-Eval, MMLU and CMMLU list them alike)."""
    return "".join(f"\n{letter}. {choice}" for letter, choice in zip(q.letters, q.choices))


def _seeded_split(subject: str, items: Sequence[Question]) -> SubjectData:
    """A seeded shuffle; its first :data:`DEMO_POOL` items are the shots, the rest (in file order)
    are scored (AGIEval without official demos, Gaokao)."""
    order = datasets_shuffle_order(len(items))
    shots = [items[i] for i in order[:DEMO_POOL]]
    questions = [items[i] for i in sorted(order[DEMO_POOL:])]
    return SubjectData(subject, shots, questions)


# ------------------------------------------------------------------------------------- C-Eval
class CEval(Benchmark):
    """Baichuan-7B ``evaluate_zh.py``: header, then examples joined by newlines. Summary: every
    column is the mean of its subjects' accuracies (C-Eval's leaderboard averages subjects);
    Avg(Hard) over the eight C-Eval Hard subjects."""

    name = "ceval"
    data_subdir = "ceval"
    splits = ("val", "test")
    default_split = "val"
    submission_split = "test"

    def subjects(self, data_dir: Path, split: str) -> list[str]:
        self._check_split(split)
        found = _stems(data_dir / split, f"_{split}.csv")
        # upstream iterates sorted(task2desc); only known subjects have a Chinese name
        return [s for s in sorted(CEVAL_SUBJECTS) if s in found]

    def load(self, data_dir: Path, subject: str, split: str) -> SubjectData:
        self._check_split(split)
        _check_subject(subject, CEVAL_SUBJECTS, self.name)
        dev = read_ceval_csv(data_dir / "dev" / f"{subject}_dev.csv", subject, need_answer=True)
        shots = [dev[i] for i in datasets_shuffle_order(len(dev))]
        questions = read_ceval_csv(
            data_dir / split / f"{subject}_{split}.csv", subject, need_answer=split != "test"
        )
        return SubjectData(subject, shots, questions)

    def header(self, subject: str) -> str:
        return f"以下是中国关于{CEVAL_SUBJECTS[subject][0]}考试的单项选择题，请选出其中的正确答案。\n"

    @staticmethod
    def example(q: Question, answer: str) -> str:
        return f"{q.question}{_options(q)}\n答案：{answer}"

    def shot(self, q: Question, number: int) -> str:
        return "\n" + self.example(q, (q.answer or "").strip().upper())

    def query(self, q: Question, n_shots: int) -> str:
        return "\n" + self.example(q, "")

    def columns(self, answered: Sequence[SubjectResult]) -> Columns:
        def category(name: str) -> float:
            return subject_mean(r for r in answered if CEVAL_SUBJECTS[r.subject][1] == name)

        return [
            ("Average", subject_mean(answered)),
            ("Avg(Hard)", subject_mean(r for r in answered if r.subject in CEVAL_HARD)),
            ("STEM", category("STEM")),
            ("Social Sciences", category("Social Science")),
            ("Humanities", category("Humanities")),
            ("Others", category("Other")),
        ]


# --------------------------------------------------------------------------------------- MMLU
class MMLU(Benchmark):
    """Baichuan-7B ``evaluate_mmlu.py`` (= hendrycks/test ``evaluate.py``). Summary: the four
    categories and the average, question-weighted as that script computes them
    (``np.mean(np.concatenate(cors))``)."""

    name = "mmlu"
    data_subdir = "mmlu"
    splits = ("test", "val")
    default_split = "test"

    def subjects(self, data_dir: Path, split: str) -> list[str]:
        self._check_split(split)
        return _stems(data_dir / split, f"_{split}.csv")

    def load(self, data_dir: Path, subject: str, split: str) -> SubjectData:
        self._check_split(split)
        shots = read_mmlu_csv(data_dir / "dev" / f"{subject}_dev.csv", subject)
        questions = read_mmlu_csv(data_dir / split / f"{subject}_{split}.csv", subject)
        return SubjectData(subject, shots, questions)

    def header(self, subject: str) -> str:
        # upstream's format_subject prefixes every word with a space: "about  abstract algebra."
        words = "".join(" " + w for w in subject.split("_"))
        return f"The following are multiple choice questions (with answers) about {words}.\n\n"

    @staticmethod
    def body(q: Question) -> str:
        return f"{q.question}{_options(q)}\nAnswer:"

    def shot(self, q: Question, number: int) -> str:
        return self.body(q) + f" {q.answer}\n\n"

    def query(self, q: Question, n_shots: int) -> str:
        return self.body(q)

    def columns(self, answered: Sequence[SubjectResult]) -> Columns:
        cols = [
            (column, question_mean(r for r in answered if MMLU_SUBCATEGORIES.get(r.subject) in MMLU_CATEGORIES[key]))
            for key, column in MMLU_COLUMNS.items()
        ]
        return [*cols, ("Average", question_mean(answered))]


# -------------------------------------------------------------------------------------- CMMLU
class CMMLU(Benchmark):
    """haonan-li/CMMLU ``src/mp_utils.py`` (non-CoT): ``题目：`` examples, ``答案是：`` stem.
    Summary: mean of subject accuracies per category and overall, as CMMLU's ``get_results``."""

    name = "cmmlu"
    data_subdir = "cmmlu"
    splits = ("test",)
    default_split = "test"
    budget_rule = True

    def subjects(self, data_dir: Path, split: str) -> list[str]:
        self._check_split(split)
        return [s for s in _stems(data_dir / split, ".csv") if s in CMMLU_SUBJECTS]

    def load(self, data_dir: Path, subject: str, split: str) -> SubjectData:
        self._check_split(split)
        _check_subject(subject, CMMLU_SUBJECTS, self.name)
        shots = read_cmmlu_csv(data_dir / "dev" / f"{subject}.csv", subject)
        questions = read_cmmlu_csv(data_dir / split / f"{subject}.csv", subject)
        return SubjectData(subject, shots, questions)

    def header(self, subject: str) -> str:
        return f"以下是关于{CMMLU_SUBJECTS[subject][0]}的单项选择题，请直接给出正确答案的选项。\n\n"

    @staticmethod
    def body(q: Question) -> str:
        return f"题目：{q.question}{_options(q)}\n答案是："

    def shot(self, q: Question, number: int) -> str:
        return self.body(q) + f"{q.answer}\n\n"

    def query(self, q: Question, n_shots: int) -> str:
        return self.body(q)

    def fit_shots(
        self, subject: str, pool: Sequence[Question], q: Question, k: int, count: TokenCount,
        max_length: int,
    ) -> list[Question]:
        """CMMLU's ``gen_prompt``: drop the longest shots (all of that length at once) while the
        shots' token total is >= ``max_length`` - tokens(header) - tokens(query)."""
        shots = list(pool[:k])
        budget = max_length - count(self.header(subject)) - count(self.query(q, 0))
        lengths = [count(self.shot(s, i + 1)) for i, s in enumerate(shots)]
        while shots and sum(lengths) >= budget:
            longest = max(lengths)
            keep = [i for i, n in enumerate(lengths) if n != longest]
            shots = [shots[i] for i in keep]
            lengths = [lengths[i] for i in keep]
        return shots

    def columns(self, answered: Sequence[SubjectResult]) -> Columns:
        cols = [
            (key, subject_mean(r for r in answered if set(CMMLU_SUBJECTS[r.subject][1]) & set(members)))
            for key, members in CMMLU_CATEGORIES.items()
        ]
        return [*cols, ("Average", subject_mean(answered))]


# ------------------------------------------------------------------------------------ AGIEval
class AGIEval(Benchmark):
    """ruixiangcui/AGIEval ``src/dataset_loader.py`` few-shot (non-CoT) layout. Demonstrations:
    the official ``few_shot_prompts.csv`` when it sits in the data folder or its parent (as in
    AGIEval's repository, ``data/few_shot_prompts.csv`` beside ``data/v1/``); every item is then
    scored. Without it, as Baichuan did ("随机划分"), each task is split: a seeded shuffle, the
    first 5 items are the demo pool and the rest are scored. Summary: the question-weighted
    average (plus the per-subject rows every summary has)."""

    name = "agieval"
    data_subdir = "agieval/v1"
    splits = ("test",)
    default_split = "test"
    budget_rule = True

    def subjects(self, data_dir: Path, split: str) -> list[str]:
        self._check_split(split)
        found = set(_stems(data_dir, ".jsonl"))
        return [s for s in AGIEVAL_DEFAULT if s in found]

    def load(self, data_dir: Path, subject: str, split: str) -> SubjectData:
        self._check_split(split)
        _check_subject(subject, AGIEVAL_DEFAULT + AGIEVAL_FIVE_OPTION, self.name)
        items = read_agieval_jsonl(data_dir / f"{subject}.jsonl", subject)
        official = self.official_demos(data_dir)
        if official is not None:
            return SubjectData(subject, read_agieval_demos(official, subject), items)
        return _seeded_split(subject, items)

    @staticmethod
    def official_demos(data_dir: Path) -> Path | None:
        for candidate in (data_dir / "few_shot_prompts.csv", data_dir.parent / "few_shot_prompts.csv"):
            if candidate.is_file():
                return candidate
        return None

    @staticmethod
    def chinese(subject: str) -> bool:
        return subject in AGIEVAL_CHINESE_QA

    def header(self, subject: str) -> str:
        if self.chinese(subject):
            return "以下是考试中各个问题的答案。\n"
        return "Here are the answers for the problems in the exam.\n"

    def _input(self, q: Question, number: int) -> str:
        passage = "" if q.subject == "sat-en-without-passage" else q.passage
        options = " ".join(q.choices)
        if self.chinese(q.subject):
            return f"问题 {number}.   {passage} {q.question}\n从以下选项中选择:    {options}\n"
        return f"Problem {number}.   {passage} {q.question}\nChoose from the following options:    {options}\n"

    def _stem(self, q: Question) -> str:
        return "答案是" if self.chinese(q.subject) else "The answer is therefore"

    def shot(self, q: Question, number: int) -> str:
        # demo = input + "答案是 {label}" + "\n", joined with end_of_example "\n"
        return self._input(q, number) + f"{self._stem(q)} {q.answer}\n\n"

    def query(self, q: Question, n_shots: int) -> str:
        return self._input(q, n_shots + 1) + self._stem(q)

    def fit_shots(
        self, subject: str, pool: Sequence[Question], q: Question, k: int, count: TokenCount,
        max_length: int,
    ) -> list[Question]:
        """AGIEval's ``concat_prompt``: demos are added while header+demos stay under
        ``max_length`` tokens; then, unlike upstream (which relies on a long context), shots are
        dropped from the end until the whole prompt fits."""
        shots: list[Question] = []
        for s in pool[:k]:
            if count(self.prefix(subject, [*shots, s])) >= max_length:
                break
            shots.append(s)
        return super().fit_shots(subject, shots, q, len(shots), count, max_length)


# ------------------------------------------------------------------------------- GAOKAO-Bench
class Gaokao(Benchmark):
    """GAOKAO-Bench objective single-answer questions in Baichuan's Chinese template (the one of
    ``evaluate_zh.py``). GAOKAO-Bench's own prompts are zero-shot generation instructions, so the
    5-shot layout follows Baichuan ("只保留了其中的单项选择题...统一5-shot"); the options are
    embedded in GAOKAO-Bench's question text. Demo pool: seeded split, as for AGIEval. Summary:
    the question-weighted average, as for AGIEval."""

    name = "gaokao"
    data_subdir = "gaokao-bench/Objective_Questions"
    splits = ("test",)
    default_split = "test"

    def subjects(self, data_dir: Path, split: str) -> list[str]:
        self._check_split(split)
        found = set(_stems(data_dir, ".json"))
        return [GAOKAO_FILES[f][0] for f in GAOKAO_FILES if f in found]

    @staticmethod
    def _file(subject: str) -> str:
        for stem, (key, _) in GAOKAO_FILES.items():
            if key == subject:
                return stem
        raise EvalDataError(f"gaokao: unknown subject {subject!r}")

    @staticmethod
    def _zh(subject: str) -> str:
        return next(zh for key, zh in GAOKAO_FILES.values() if key == subject)

    def load(self, data_dir: Path, subject: str, split: str) -> SubjectData:
        self._check_split(split)
        items = read_gaokao_json(data_dir / f"{self._file(subject)}.json", subject)
        return _seeded_split(subject, items)

    def header(self, subject: str) -> str:
        return f"以下是中国关于{self._zh(subject)}考试的单项选择题，请选出其中的正确答案。\n"

    @staticmethod
    def example(q: Question, answer: str) -> str:
        return f"{q.question.strip()}\n答案：{answer}"

    def shot(self, q: Question, number: int) -> str:
        return "\n" + self.example(q, q.answer or "")

    def query(self, q: Question, n_shots: int) -> str:
        return "\n" + self.example(q, "")


# the registry, in the order the CLI and the docs list the benchmarks
BENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (CEval, MMLU, CMMLU, Gaokao, AGIEval)}
TASKS: tuple[str, ...] = tuple(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]()
    except KeyError:
        raise EvalDataError(f"unknown task {name!r} (have {', '.join(BENCHMARKS)})") from None


def resolve_data_dir(task: str, data_dir: str | Path) -> Path:
    """Accept either the benchmark's own folder or a root holding all of them."""
    root = require_dir(data_dir, f"{task} data")
    sub = Path(get_benchmark(task).data_subdir)
    for candidate in (root / sub, root / sub.name):
        if candidate.is_dir():
            return candidate
    return root
