"""MMLU subject categories in the shape of hendrycks/test's ``categories.py`` (which upstream's
``evaluate_mmlu.py`` imports); the tables themselves live in ``baichuan.evaluation.subjects``."""

from baichuan.evaluation.subjects import MMLU_CATEGORIES, MMLU_SUBCATEGORIES

subcategories: dict[str, list[str]] = {k: [v] for k, v in MMLU_SUBCATEGORIES.items()}
categories: dict[str, list[str]] = {k: list(v) for k, v in MMLU_CATEGORIES.items()}
