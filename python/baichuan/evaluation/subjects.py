"""Subject tables of the five benchmarks, as their upstream sources list them.

Sources (read, not copied; see docs/evaluation.md):

- C-Eval Chinese subject names: ``CEval.task2desc`` in baichuan-inc/Baichuan-7B
  ``evaluation/evaluate_zh.py`` (note ``mao_zedong_thought`` reads "毛泽东思想和中国特色社会主义理论概论",
  without the "体系" of C-Eval's own mapping; the prompt uses Baichuan's text).
- C-Eval categories: hkust-nlp/ceval ``subject_mapping.json``; it leaves ``clinical_medicine``
  without a category, the C-Eval paper and leaderboard count it under "Other", and so do we.
  The eight "Hard" subjects are those of the C-Eval paper (C-Eval Hard).
- MMLU subcategories/categories: hendrycks/test ``categories.py`` (the file Baichuan's
  ``evaluate_mmlu.py`` imports).
- CMMLU names/subcategories/categories: haonan-li/CMMLU ``src/categories.py``.
- AGIEval task groups: ruixiangcui/AGIEval ``src/dataset_loader.py``.
- GAOKAO-Bench objective files: OpenLMLab/GAOKAO-Bench ``Data/Objective_Questions``.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------- C-Eval
# subject -> (Chinese name used in the prompt, category)
CEVAL_SUBJECTS: dict[str, tuple[str, str]] = {
    "computer_network": ("计算机网络", "STEM"),
    "operating_system": ("操作系统", "STEM"),
    "computer_architecture": ("计算机组成", "STEM"),
    "college_programming": ("大学编程", "STEM"),
    "college_physics": ("大学物理", "STEM"),
    "college_chemistry": ("大学化学", "STEM"),
    "advanced_mathematics": ("高等数学", "STEM"),
    "probability_and_statistics": ("概率统计", "STEM"),
    "discrete_mathematics": ("离散数学", "STEM"),
    "electrical_engineer": ("注册电气工程师", "STEM"),
    "metrology_engineer": ("注册计量师", "STEM"),
    "high_school_mathematics": ("高中数学", "STEM"),
    "high_school_physics": ("高中物理", "STEM"),
    "high_school_chemistry": ("高中化学", "STEM"),
    "high_school_biology": ("高中生物", "STEM"),
    "middle_school_mathematics": ("初中数学", "STEM"),
    "middle_school_biology": ("初中生物", "STEM"),
    "middle_school_physics": ("初中物理", "STEM"),
    "middle_school_chemistry": ("初中化学", "STEM"),
    "veterinary_medicine": ("兽医学", "STEM"),
    "college_economics": ("大学经济学", "Social Science"),
    "business_administration": ("工商管理", "Social Science"),
    "marxism": ("马克思主义基本原理", "Social Science"),
    "mao_zedong_thought": ("毛泽东思想和中国特色社会主义理论概论", "Social Science"),
    "education_science": ("教育学", "Social Science"),
    "teacher_qualification": ("教师资格", "Social Science"),
    "high_school_politics": ("高中政治", "Social Science"),
    "high_school_geography": ("高中地理", "Social Science"),
    "middle_school_politics": ("初中政治", "Social Science"),
    "middle_school_geography": ("初中地理", "Social Science"),
    "modern_chinese_history": ("近代史纲要", "Humanities"),
    "ideological_and_moral_cultivation": ("思想道德修养与法律基础", "Humanities"),
    "logic": ("逻辑学", "Humanities"),
    "law": ("法学", "Humanities"),
    "chinese_language_and_literature": ("中国语言文学", "Humanities"),
    "art_studies": ("艺术学", "Humanities"),
    "professional_tour_guide": ("导游资格", "Humanities"),
    "legal_professional": ("法律职业资格", "Humanities"),
    "high_school_chinese": ("高中语文", "Humanities"),
    "high_school_history": ("高中历史", "Humanities"),
    "middle_school_history": ("初中历史", "Humanities"),
    "civil_servant": ("公务员", "Other"),
    "sports_science": ("体育学", "Other"),
    "plant_protection": ("植物保护", "Other"),
    "basic_medicine": ("基础医学", "Other"),
    "clinical_medicine": ("临床医学", "Other"),
    "urban_and_rural_planner": ("注册城乡规划师", "Other"),
    "accountant": ("注册会计师", "Other"),
    "fire_engineer": ("注册消防工程师", "Other"),
    "environmental_impact_assessment_engineer": ("环境影响评价工程师", "Other"),
    "tax_accountant": ("税务师", "Other"),
    "physician": ("医师资格", "Other"),
}

CEVAL_HARD: frozenset[str] = frozenset(
    {
        "advanced_mathematics",
        "discrete_mathematics",
        "probability_and_statistics",
        "college_chemistry",
        "college_physics",
        "high_school_mathematics",
        "high_school_chemistry",
        "high_school_physics",
    }
)

# ----------------------------------------------------------------------------------------- MMLU
MMLU_SUBCATEGORIES: dict[str, str] = {
    "abstract_algebra": "math",
    "anatomy": "health",
    "astronomy": "physics",
    "business_ethics": "business",
    "clinical_knowledge": "health",
    "college_biology": "biology",
    "college_chemistry": "chemistry",
    "college_computer_science": "computer science",
    "college_mathematics": "math",
    "college_medicine": "health",
    "college_physics": "physics",
    "computer_security": "computer science",
    "conceptual_physics": "physics",
    "econometrics": "economics",
    "electrical_engineering": "engineering",
    "elementary_mathematics": "math",
    "formal_logic": "philosophy",
    "global_facts": "other",
    "high_school_biology": "biology",
    "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science",
    "high_school_european_history": "history",
    "high_school_geography": "geography",
    "high_school_government_and_politics": "politics",
    "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math",
    "high_school_microeconomics": "economics",
    "high_school_physics": "physics",
    "high_school_psychology": "psychology",
    "high_school_statistics": "math",
    "high_school_us_history": "history",
    "high_school_world_history": "history",
    "human_aging": "health",
    "human_sexuality": "culture",
    "international_law": "law",
    "jurisprudence": "law",
    "logical_fallacies": "philosophy",
    "machine_learning": "computer science",
    "management": "business",
    "marketing": "business",
    "medical_genetics": "health",
    "miscellaneous": "other",
    "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy",
    "nutrition": "health",
    "philosophy": "philosophy",
    "prehistory": "history",
    "professional_accounting": "other",
    "professional_law": "law",
    "professional_medicine": "health",
    "professional_psychology": "psychology",
    "public_relations": "politics",
    "security_studies": "politics",
    "sociology": "culture",
    "us_foreign_policy": "politics",
    "virology": "health",
    "world_religions": "philosophy",
}

# upstream category name -> subcategories; the summary uses the short column names below
MMLU_CATEGORIES: dict[str, tuple[str, ...]] = {
    "STEM": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "humanities": ("history", "philosophy", "law"),
    "social sciences": ("politics", "culture", "economics", "geography", "psychology"),
    "other (business, health, misc.)": ("other", "business", "health"),
}
MMLU_COLUMNS: dict[str, str] = {
    "humanities": "Humanities",
    "social sciences": "Social Sciences",
    "STEM": "STEM",
    "other (business, health, misc.)": "Other",
}

# ---------------------------------------------------------------------------------------- CMMLU
# subject -> (Chinese name, subcategories)
CMMLU_SUBJECTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "agronomy": ("农学", ("other",)),
    "anatomy": ("解剖学", ("biology",)),
    "ancient_chinese": ("古汉语", ("linguistics", "china specific")),
    "arts": ("艺术学", ("arts",)),
    "astronomy": ("天文学", ("physics",)),
    "business_ethics": ("商业伦理", ("business",)),
    "chinese_civil_service_exam": ("中国公务员考试", ("politics", "china specific")),
    "chinese_driving_rule": ("中国驾驶规则", ("other", "china specific")),
    "chinese_food_culture": ("中国饮食文化", ("culture", "china specific")),
    "chinese_foreign_policy": ("中国外交政策", ("politics", "china specific")),
    "chinese_history": ("中国历史", ("history", "china specific")),
    "chinese_literature": ("中国文学", ("literature", "china specific")),
    "chinese_teacher_qualification": ("中国教师资格", ("education", "china specific")),
    "clinical_knowledge": ("临床知识", ("other",)),
    "college_actuarial_science": ("大学精算学", ("math",)),
    "college_education": ("大学教育学", ("education",)),
    "college_engineering_hydrology": ("大学工程水文学", ("engineering",)),
    "college_law": ("大学法律", ("law",)),
    "college_mathematics": ("大学数学", ("math",)),
    "college_medical_statistics": ("大学医学统计", ("statistics",)),
    "college_medicine": ("大学医学", ("other",)),
    "computer_science": ("计算机科学", ("computer science",)),
    "computer_security": ("计算机安全", ("other",)),
    "conceptual_physics": ("概念物理学", ("physics",)),
    "construction_project_management": ("建设工程管理", ("other", "china specific")),
    "economics": ("经济学", ("economics",)),
    "education": ("教育学", ("education",)),
    "electrical_engineering": ("电气工程", ("engineering",)),
    "elementary_chinese": ("小学语文", ("linguistics", "china specific")),
    "elementary_commonsense": ("小学常识", ("other", "china specific")),
    "elementary_information_and_technology": ("小学信息技术", ("other",)),
    "elementary_mathematics": ("初等数学", ("math",)),
    "ethnology": ("民族学", ("culture", "china specific")),
    "food_science": ("食品科学", ("other",)),
    "genetics": ("遗传学", ("biology",)),
    "global_facts": ("全球事实", ("global",)),
    "high_school_biology": ("高中生物", ("biology",)),
    "high_school_chemistry": ("高中化学", ("chemistry",)),
    "high_school_geography": ("高中地理", ("geography",)),
    "high_school_mathematics": ("高中数学", ("math",)),
    "high_school_physics": ("高中物理学", ("physics",)),
    "high_school_politics": ("高中政治", ("politics", "china specific")),
    "human_sexuality": ("人类性行为", ("other",)),
    "international_law": ("国际法学", ("law",)),
    "journalism": ("新闻学", ("sociology",)),
    "jurisprudence": ("法理学", ("law",)),
    "legal_and_moral_basis": ("法律与道德基础", ("other",)),
    "logical": ("逻辑学", ("philosophy",)),
    "machine_learning": ("机器学习", ("computer science",)),
    "management": ("管理学", ("business",)),
    "marketing": ("市场营销", ("business",)),
    "marxist_theory": ("马克思主义理论", ("philosophy",)),
    "modern_chinese": ("现代汉语", ("linguistics", "china specific")),
    "nutrition": ("营养学", ("other",)),
    "philosophy": ("哲学", ("philosophy",)),
    "professional_accounting": ("专业会计", ("business",)),
    "professional_law": ("专业法学", ("law",)),
    "professional_medicine": ("专业医学", ("other",)),
    "professional_psychology": ("专业心理学", ("psychology",)),
    "public_relations": ("公共关系", ("politics",)),
    "security_study": ("安全研究", ("politics",)),
    "sociology": ("社会学", ("culture",)),
    "sports_science": ("体育学", ("other",)),
    "traditional_chinese_medicine": ("中医中药", ("other", "china specific")),
    "virology": ("病毒学", ("biology",)),
    "world_history": ("世界历史", ("history",)),
    "world_religions": ("世界宗教", ("global",)),
}

CMMLU_CATEGORIES: dict[str, tuple[str, ...]] = {
    "STEM": ("physics", "chemistry", "biology", "computer science", "math", "engineering", "statistics"),
    "Humanities": ("history", "philosophy", "law", "arts", "literature", "global"),
    "Social Science": (
        "linguistics", "business", "politics", "culture", "economics",
        "geography", "psychology", "education", "sociology",
    ),
    "Other": ("other",),
    "China specific": ("china specific",),
}

# -------------------------------------------------------------------------------------- AGIEval
AGIEVAL_CHINESE_QA: frozenset[str] = frozenset(
    {"logiqa-zh", "jec-qa-kd", "jec-qa-ca", "gaokao-chinese", "gaokao-geography", "gaokao-history",
     "gaokao-biology", "gaokao-chemistry", "gaokao-physics", "gaokao-mathqa"}
)
# Baichuan-7B: "只保留了其中的四选一单项选择题" -> the four-option single-answer tasks are the default.
# gaokao-physics mixes single and multiple answers: only its single-answer items are kept.
AGIEVAL_DEFAULT: tuple[str, ...] = (
    "gaokao-biology", "gaokao-chemistry", "gaokao-chinese", "gaokao-english", "gaokao-geography",
    "gaokao-history", "gaokao-mathqa", "gaokao-physics", "logiqa-en", "logiqa-zh",
    "sat-en", "sat-en-without-passage", "sat-math",
)
# five-option single-answer tasks, available with --subjects
AGIEVAL_FIVE_OPTION: tuple[str, ...] = ("aqua-rat", "lsat-ar", "lsat-lr", "lsat-rc")

# --------------------------------------------------------------------------------- GAOKAO-Bench
# objective file stem -> (subject key, Chinese subject name); only files with single-answer items
GAOKAO_FILES: dict[str, tuple[str, str]] = {
    "2010-2022_Biology_MCQs": ("biology", "高考生物"),
    "2010-2022_Chemistry_MCQs": ("chemistry", "高考化学"),
    "2010-2022_Chinese_Lang_and_Usage_MCQs": ("chinese_lang_and_usage", "高考语文"),
    "2010-2013_English_MCQs": ("english", "高考英语"),
    "2010-2022_History_MCQs": ("history", "高考历史"),
    "2010-2022_Math_I_MCQs": ("math_i", "高考数学"),
    "2010-2022_Math_II_MCQs": ("math_ii", "高考数学"),
    "2010-2022_Physics_MCQs": ("physics", "高考物理"),
    "2010-2022_Political_Science_MCQs": ("political_science", "高考政治"),
}
