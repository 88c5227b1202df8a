#!/usr/bin/env python3
"""Upstream-style entry point for the Chinese benchmarks (Baichuan-7B ``evaluation/evaluate_zh.py``).

Same arguments as upstream, minus its hard-coded paths and hub download: the model folder and the
data folder are arguments. Everything runs through ``baichuan.evaluation`` (the same code as
``baichuan eval``): upstream's C-Eval prompt, 5 dev shots in the ``shuffle(seed=123)`` order,
letter scoring, batched with a shared-prefix KV cache.

    python evaluation/evaluate_zh.py --model_id MODEL_DIR --data_path ../shared/eval-data/ceval \\
        --task ceval --shot 5 --split val
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from baichuan.evaluation.benchmarks import TASKS
from baichuan.evaluation.report import write_outputs
from baichuan.evaluation.runner import EvalConfig, run

ZH_TASKS = [t for t in TASKS if t != "mmlu"]  # MMLU has its own script, evaluate_mmlu.py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu_idx", type=str, default=None, help="sets CUDA_VISIBLE_DEVICES")
    parser.add_argument("--model_id", type=str, required=True, help="model folder (ours or transformers)")
    parser.add_argument("--data_path", type=str, required=True, help="benchmark folder")
    parser.add_argument("--task", type=str, default="ceval", choices=ZH_TASKS)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--split", type=str, default="test",
                        help="val|test (default test, as upstream: predictions for submission, no accuracy)")
    parser.add_argument("--show_detail", action="store_true", help="print each subject's first prompt")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--save_dir", type=str, default="results")
    parser.add_argument("--subjects", nargs="+", default=None, help="(ours) a subset of subjects")
    parser.add_argument("--limit", type=int, default=None, help="(ours) first N questions per subject")
    args = parser.parse_args(argv)
    if args.gpu_idx is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu_idx
    cfg = EvalConfig(task=args.task, data_dir=args.data_path, model=args.model_id, shot=args.shot,
                     split=args.split, show_prompts=args.show_detail, batch_size=args.batch_size,
                     subjects=args.subjects, limit=args.limit)
    result = run(cfg)
    model_name = os.path.basename(os.path.normpath(args.model_id))
    name = f"{model_name}_{args.task}_{len(result.subjects)}_{result.split}_{args.shot}-shot"
    write_outputs(result, Path(args.save_dir) / name)
    answered = result.answered
    print(f"{time.strftime('%Y%m%d %H:%M:%S')}\t{name}")
    if answered:
        example = sum(sum(s.correct) for s in answered) / sum(len(s.items) for s in answered)
        subject = sum(s.accuracy for s in answered) / len(answered)
        print(f"\tAverage example acc: {example:.4f}")
        print(f"\tAverage subject acc: {subject:.4f}")
    else:
        print(f"\tno answers in this split: submission in {args.save_dir}/{name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
