"""`baichuan eval`: 5-shot C-Eval, MMLU, CMMLU, Gaokao, AGIEval with upstream's prompts."""

from __future__ import annotations

import argparse

from baichuan.devices import DTYPE_CHOICES
from baichuan.evaluation.backends import BACKENDS
from baichuan.evaluation.benchmarks import TASKS

HELP = "5-shot evaluation: C-Eval, MMLU, CMMLU, Gaokao, AGIEval (upstream prompts, batched, prefix-cached)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data-dir", required=True,
                        help="the benchmark's folder (e.g. eval-data/ceval) or a root holding all five")
    parser.add_argument("--model", required=True,
                        help="our model folder, a DeepSpeed checkpoint directory written by `baichuan train`, "
                             "or a transformers causal-LM folder")
    parser.add_argument("--tokenizer", default=None,
                        help="SentencePiece .model (default: the tokenizer.model stored with --model, "
                             "found as `baichuan generate` does)")
    parser.add_argument("--shot", type=int, default=5,
                        help="demonstrations per prompt, from the dev split (default: 5)")
    parser.add_argument("--split", default=None,
                        help="val|test (default: val for C-Eval, test for the others)")
    parser.add_argument("--subjects", nargs="+", default=None, metavar="SUBJECT",
                        help="subjects to evaluate, e.g. anatomy virology (default: all of the split)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="prompts per forward pass (default: 16)")
    parser.add_argument("--max-length", type=int, default=2048,
                        help="prompt token limit; shots are dropped per the benchmark's rule (default: 2048)")
    parser.add_argument("--output", default=None, help="folder for per-subject results, summary, plot")
    parser.add_argument("--show-prompts", action="store_true",
                        help="print each subject's first prompt")
    parser.add_argument("--add-bos", action="store_true",
                        help="prepend BOS (upstream's MMLU script sets add_bos_token=False)")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="run every prompt in full (same results, slower)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto: Baichuan folders (ours, export-hf, official) load into our model, "
                             "other transformers folders through AutoModelForCausalLM")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a transformers folder's own modelling code (only for folders you trust)")
    parser.add_argument("--limit", type=int, default=None, help="first N questions per subject (smoke runs)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from baichuan.errors import BaichuanError, as_user_error
    from baichuan.evaluation.report import format_columns, summary_columns
    from baichuan.evaluation.runner import EvalConfig
    from baichuan.evaluation.runner import run as run_eval

    if args.shot < 0 or args.batch_size < 1 or args.max_length < 1:
        raise BaichuanError("--shot must be >= 0, --batch-size and --max-length >= 1")
    cfg = EvalConfig(
        task=args.task, data_dir=args.data_dir, model=args.model, tokenizer=args.tokenizer,
        shot=args.shot, split=args.split, subjects=args.subjects, batch_size=args.batch_size,
        max_length=args.max_length, output=args.output, show_prompts=args.show_prompts,
        add_bos=args.add_bos, prefix_cache=not args.no_prefix_cache, device=args.device,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code, backend=args.backend, limit=args.limit,
        progress=not args.no_progress,
    )
    with as_user_error(ValueError):  # EvalDataError is a BaichuanError; OSError is printed by baichuan.cli
        result = run_eval(cfg)
    print(f"{result.task} {result.split} {result.shot}-shot, {result.questions} questions, "
          f"{result.seconds:.1f} s: {format_columns(summary_columns(result))}")
    if args.output:
        print(f"results in {args.output} (summary.md, results.json, subjects/, accuracy.png)")
    return 0
