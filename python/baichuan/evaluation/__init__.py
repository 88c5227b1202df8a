"""5-shot evaluation: C-Eval, MMLU, CMMLU, Gaokao, AGIEval (docs/evaluation.md).

Modules, each importing only those before it: ``subjects`` (upstream subject tables), ``data``
(file readers), ``results`` (result types and accuracy means), ``benchmarks`` (the registry:
prompt formats, shot rules, summary columns), ``report`` (tables, plot, submission),
``backends`` (model and tokenizer loading), ``scoring`` (batched, prefix-cached letter scoring),
``runner`` (the driver). ``scoring`` and ``runner`` import torch; the others do not (``backends``
only when it loads a model).
"""

from baichuan.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from baichuan.evaluation.data import EvalDataError, Question, SubjectData

__all__ = ["BENCHMARKS", "Benchmark", "EvalDataError", "Question", "SubjectData", "get_benchmark"]
