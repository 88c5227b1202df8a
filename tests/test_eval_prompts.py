"""Acceptance 1: our prompts equal an independent reconstruction of each upstream format, on the real
data in ../shared/eval-data. The reconstructions below are written from the documented formats
(docs/evaluation.md) with the readers upstream used: pandas for MMLU/CMMLU (as evaluate_mmlu.py and
CMMLU's mp_utils.py do) and ``datasets``' shuffle for C-Eval's dev order (as evaluate_zh.py does).
Also: the data readers' variants and their errors naming file and row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from baichuan.evaluation.benchmarks import get_benchmark, resolve_data_dir
from baichuan.evaluation.data import EvalDataError, read_cmmlu_csv, read_mmlu_csv

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "eval-data"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/eval-data is absent")


def ours(task: str, subject: str, split: str, k: int = 5) -> list[str]:
    bench = get_benchmark(task)
    data = bench.load(resolve_data_dir(task, DATA), subject, split)
    return [bench.prompt(subject, data.shots[:k], q) for q in data.questions]


# ------------------------------------------------------------------------------------- C-Eval
CEVAL_ZH = {"computer_network": "计算机网络", "law": "法学", "high_school_physics": "高中物理",
            "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论概论", "legal_professional": "法律职业资格"}


def _ceval_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("subject", sorted(CEVAL_ZH))
@pytest.mark.parametrize("split", ["val", "test"])
def test_ceval_prompts_match_upstream(subject: str, split: str) -> None:
    datasets = pytest.importorskip("datasets")
    dev = _ceval_rows(DATA / "ceval" / "dev" / f"{subject}_dev.csv")
    shuffled = datasets.Dataset.from_list(dev).shuffle(seed=123)  # upstream: dataset['dev'].shuffle(seed=123)
    rows = _ceval_rows(DATA / "ceval" / split / f"{subject}_{split}.csv")

    def example(d: dict[str, str], with_answer: bool) -> str:
        answer = d["answer"].strip().upper() if with_answer else ""
        return (d["question"] + "\n" + "A. " + d["A"] + "\n" + "B. " + d["B"] + "\n" + "C. " + d["C"]
                + "\n" + "D. " + d["D"] + "\n" + "答案：" + answer)

    expected = []
    for d in rows:
        p = "以下是中国关于" + CEVAL_ZH[subject] + "考试的单项选择题，请选出其中的正确答案。\n"
        for i in range(5):
            p += "\n" + example(shuffled[i], True)
        expected.append(p + "\n" + example(d, False))
    assert ours("ceval", subject, split) == expected


def test_ceval_zero_shot_matches_upstream() -> None:
    d = _ceval_rows(DATA / "ceval" / "val" / "law_val.csv")[0]
    expect = (f"以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n{d['question']}\n"
              f"A. {d['A']}\nB. {d['B']}\nC. {d['C']}\nD. {d['D']}\n答案：")
    assert ours("ceval", "law", "val", k=0)[0] == expect


def test_ceval_all_subjects_and_counts() -> None:
    bench = get_benchmark("ceval")
    d = resolve_data_dir("ceval", DATA)
    subjects = bench.subjects(d, "val")
    assert len(subjects) == 52
    assert sum(len(bench.load(d, s, "val").questions) for s in subjects) == 1346


# --------------------------------------------------------------------------------------- MMLU
@pytest.mark.parametrize(
    "subject", ["abstract_algebra", "college_mathematics", "high_school_us_history", "virology",
                "college_computer_science"]
)
def test_mmlu_prompts_match_upstream(subject: str) -> None:
    pd = pytest.importorskip("pandas")
    # This copy has a header row and 0-3 answers; upstream's files have neither. Reading with
    # header=0 and mapping the index gives upstream's frame (pandas' NA rule included: "None"->nan).
    dev = pd.read_csv(DATA / "mmlu" / "dev" / f"{subject}_dev.csv", header=0)[:5]
    test = pd.read_csv(DATA / "mmlu" / "test" / f"{subject}_test.csv", header=0)
    letters = ["A", "B", "C", "D"]

    def example(df, i: int, with_answer: bool) -> str:  # noqa: ANN001
        s = df.iloc[i, 0]
        for j in range(4):
            s += f"\n{letters[j]}. {df.iloc[i, j + 1]}"
        s += "\nAnswer:"
        if with_answer:
            s += f" {letters[int(df.iloc[i, 5])]}\n\n"
        return s

    head = "The following are multiple choice questions (with answers) about {}.\n\n".format(
        "".join(" " + w for w in subject.split("_"))
    )
    train = head + "".join(example(dev, i, True) for i in range(5))
    expected = [train + example(test, i, False) for i in range(len(test))]
    assert ours("mmlu", subject, "test") == expected


def test_mmlu_none_option_becomes_nan_like_upstream() -> None:
    prompts = ours("mmlu", "college_mathematics", "test")
    assert sum("nan" in p.split("Answer: ")[-1] for p in prompts) >= 1


def test_mmlu_counts() -> None:
    bench = get_benchmark("mmlu")
    d = resolve_data_dir("mmlu", DATA)
    subjects = bench.subjects(d, "test")
    assert len(subjects) == 57
    assert sum(len(bench.load(d, s, "test").questions) for s in subjects) == 14042


# -------------------------------------------------------------------------------------- CMMLU
CMMLU_ZH = {"agronomy": "农学", "chinese_history": "中国历史", "high_school_physics": "高中物理学",
            "world_religions": "世界宗教"}


@pytest.mark.parametrize("subject", sorted(CMMLU_ZH))
def test_cmmlu_prompts_match_upstream(subject: str) -> None:
    pd = pytest.importorskip("pandas")
    dev = pd.read_csv(DATA / "cmmlu" / "dev" / f"{subject}.csv", header=0, index_col=0)
    test = pd.read_csv(DATA / "cmmlu" / "test" / f"{subject}.csv", header=0, index_col=0)

    def example(df, i: int, with_answer: bool) -> str:  # noqa: ANN001
        s = "题目：" + df.iloc[i, 0]
        for j, letter in enumerate("ABCD"):
            s += f"\n{letter}. {df.iloc[i, j + 1]}"
        s += "\n答案是："
        if with_answer:
            s += f"{df.iloc[i, 5]}\n\n"
        return s

    head = f"以下是关于{CMMLU_ZH[subject]}的单项选择题，请直接给出正确答案的选项。\n\n"
    expected = [head + "".join(example(dev, j, True) for j in range(5)) + example(test, i, False)
                for i in range(len(test))]
    assert ours("cmmlu", subject, "test") == expected


# ------------------------------------------------------------------------------------ AGIEval
@pytest.mark.parametrize("task", ["logiqa-zh", "gaokao-history", "sat-math", "logiqa-en", "gaokao-english"])
def test_agieval_prompts_match_official_layout(task: str) -> None:
    lines = [json.loads(x) for x in open(DATA / "agieval" / "v1" / f"{task}.jsonl", encoding="utf-8")]
    items = [x for x in lines if isinstance(x["label"], str) and len(x["label"]) == 1]
    order = np.random.default_rng(123).permutation(len(items))
    demos = [items[i] for i in order[:5]]
    tests = [items[i] for i in sorted(order[5:])]
    zh = task in ("logiqa-zh", "gaokao-history")

    def inp(x: dict, n: int) -> str:
        passage = x["passage"] if x["passage"] is not None else ""
        if zh:
            return (f"问题 {n}.   " + passage + " " + x["question"] + "\n"
                    + "从以下选项中选择:    " + " ".join(x["options"]) + "\n")
        return (f"Problem {n}.   " + passage + " " + x["question"] + "\n"
                + "Choose from the following options:    " + " ".join(x["options"]) + "\n")

    def out(x: dict) -> str:
        return ("答案是 {}" if zh else "The answer is therefore {}").format(x["label"])

    head = "以下是考试中各个问题的答案。\n" if zh else "Here are the answers for the problems in the exam.\n"
    demo_text = "".join(inp(d, i + 1) + out(d) + "\n" + "\n" for i, d in enumerate(demos))
    stem = "答案是" if zh else "The answer is therefore"
    expected = [head + demo_text + inp(t, 6) + stem for t in tests]
    assert ours("agieval", task, "test") == expected


# ------------------------------------------------------------------------------------- Gaokao
@pytest.mark.parametrize(
    ("stem", "subject", "zh"),
    [("2010-2022_History_MCQs", "history", "高考历史"), ("2010-2022_Math_I_MCQs", "math_i", "高考数学"),
     ("2010-2013_English_MCQs", "english", "高考英语"),
     ("2010-2022_Chinese_Lang_and_Usage_MCQs", "chinese_lang_and_usage", "高考语文")],
)
def test_gaokao_prompts_match_documented_layout(stem: str, subject: str, zh: str) -> None:
    doc = json.load(open(DATA / "gaokao-bench" / "Objective_Questions" / f"{stem}.json", encoding="utf-8"))
    items = [e for e in doc["example"] if len(e["answer"]) == 1]
    order = np.random.default_rng(123).permutation(len(items))
    demos = [items[i] for i in order[:5]]
    tests = [items[i] for i in sorted(order[5:])]
    head = "以下是中国关于" + zh + "考试的单项选择题，请选出其中的正确答案。\n"
    shots = "".join("\n" + d["question"].strip() + "\n答案：" + d["answer"][0] for d in demos)
    expected = [head + shots + "\n" + t["question"].strip() + "\n答案：" for t in tests]
    assert ours("gaokao", subject, "test") == expected


# ------------------------------------------------------------------------------ reader variants
def test_mmlu_variants_read_the_same(tmp_path: Path) -> None:
    """Header row + index answers (this copy) == upstream's headerless letter layout."""
    src = DATA / "mmlu" / "dev" / "college_mathematics_dev.csv"  # CRLF inside quoted fields
    with open(src, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert any("\r\n" in cell for r in rows for cell in r)
    upstream = tmp_path / "college_mathematics_dev.csv"
    with open(upstream, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        for r in rows[1:]:
            w.writerow(r[:5] + ["ABCD"[int(r[5])]])
    a = read_mmlu_csv(src, "college_mathematics")
    b = read_mmlu_csv(upstream, "college_mathematics")
    assert [(q.question, q.choices, q.answer) for q in a] == [(q.question, q.choices, q.answer) for q in b]
    assert len(a) == 5 and a[0].answer in "ABCD"


def test_cmmlu_without_index_column(tmp_path: Path) -> None:
    src = DATA / "cmmlu" / "dev" / "agronomy.csv"
    with open(src, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    plain = tmp_path / "agronomy.csv"
    with open(plain, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(r[1:] for r in rows)
    a, b = read_cmmlu_csv(src, "agronomy"), read_cmmlu_csv(plain, "agronomy")
    assert [(q.question, q.choices, q.answer) for q in a] == [(q.question, q.choices, q.answer) for q in b]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("question,A,B,C,D,answer\nq1,a,b,c,d,A\nq2,a,b,c,A\n", "line 3: expected 6 fields"),
        ("question,A,B,C,D,answer\nq1,a,b,c,d,A\nq2,a,b,c,d,E\n", "line 3: answer 'E'"),
        ('question,A,B,C,D,answer\n"q1\nspans, lines",a,b,c,d,A\nq2,a,b,c,d,7\n', "line 4: answer '7'"),
        ('question,A,B,C,D,answer\nq1,a,b,c,d,A\n"q2 never closed,a,b,c,d,B\n', "line 3: malformed CSV"),
    ],
)
def test_malformed_mmlu_names_file_and_row(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad_test.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalDataError) as err:
        read_mmlu_csv(path, "bad")
    assert str(path) in str(err.value) and needle in str(err.value)


def test_malformed_ceval_and_json(tmp_path: Path) -> None:
    bench = get_benchmark("ceval")
    (tmp_path / "dev").mkdir()
    (tmp_path / "val").mkdir()
    (tmp_path / "dev" / "law_dev.csv").write_text(
        "id,question,A,B,C,D,answer,explanation\n0,q,a,b,c,d,A,e\n", encoding="utf-8")
    (tmp_path / "val" / "law_val.csv").write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"law_val\.csv: header .* lacks column\(s\) \['answer'\]"):
        bench.load(tmp_path, "law", "val")
    bad = tmp_path / "logiqa-zh.jsonl"
    bad.write_text('{"passage": null, "question": "q", "options": ["(A)a"], "label": "A"}\n{oops\n',
                   encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"logiqa-zh\.jsonl: line 2: invalid JSON"):
        get_benchmark("agieval").load(tmp_path, "logiqa-zh", "test")


def test_agieval_official_demos_file(tmp_path: Path) -> None:
    """With AGIEval's ``few_shot_prompts.csv`` beside ``v1/`` (its repository layout), its demos are
    used (records 1, 3, 5, ... hold Python dict literals; the others explanations) and every item
    is scored. The file here is written in that layout from three made-up demos."""
    (tmp_path / "v1").mkdir()
    src = DATA / "agieval" / "v1" / "logiqa-zh.jsonl"
    (tmp_path / "v1" / "logiqa-zh.jsonl").symlink_to(src)
    demos = [{"passage": f"材料{i}", "question": f"问题{i}？", "options": ["(A)甲", "(B)乙", "(C)丙", "(D)丁"],
              "label": "ABCD"[i], "answer": None, "other": None} for i in range(3)]
    with open(tmp_path / "few_shot_prompts.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["", "lsat-ar", "logiqa-zh"])
        for i, d in enumerate(demos):
            w.writerow([f"sample {i + 1}", "{'passage': None}", repr(d)])
            w.writerow([f"explanation {i + 1}", "", f"解析{i}"])
    bench = get_benchmark("agieval")
    data = bench.load(resolve_data_dir("agieval", tmp_path), "logiqa-zh", "test")
    items = [json.loads(x) for x in open(src, encoding="utf-8")]
    assert len(data.questions) == len(items) and len(data.shots) == 3
    shots = "".join(f"问题 {i + 1}.   {d['passage']} {d['question']}\n从以下选项中选择:    "
                    + " ".join(d["options"]) + f"\n答案是 {d['label']}\n\n" for i, d in enumerate(demos))
    q = items[0]
    expected = ("以下是考试中各个问题的答案。\n" + shots + f"问题 4.   {q['passage']} {q['question']}\n"
                "从以下选项中选择:    " + " ".join(q["options"]) + "\n答案是")
    assert bench.prompt("logiqa-zh", data.shots, data.questions[0]) == expected
