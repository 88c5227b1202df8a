"""5-shot evaluation: C-Eval, MMLU, CMMLU, Gaokao, AGIEval (docs/evaluation.md).

Modules: ``subjects`` (upstream subject tables), ``data`` (file readers), ``benchmarks`` (prompt
formats and shot rules), ``scoring`` (batched, prefix-cached letter scoring), ``backends`` (model
and tokenizer loading), ``runner`` (the driver), ``report`` (tables, plot, submission).
Only ``data``/``benchmarks``/``subjects`` are torch-free.
"""

from baichuan.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from baichuan.evaluation.data import EvalDataError, Question, SubjectData

__all__ = ["BENCHMARKS", "Benchmark", "EvalDataError", "Question", "SubjectData", "get_benchmark"]
