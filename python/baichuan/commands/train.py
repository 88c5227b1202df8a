"""`baichuan train`: pre-train (or continue) a Baichuan model with DeepSpeed.

Three ways to run it (docs/training.md):

* ``baichuan train --data D --output-dir O ...``: one process (one GPU, or the CPU).
* ``baichuan train --num-procs N ...`` (or ``--hostfile H``): starts N ranks through the
  ``deepspeed`` launcher (on a CPU-only machine: N CPU processes over gloo).
* ``deepspeed [--hostfile H | --num_gpus N] $(which baichuan) train ...`` or ``scripts/train.sh``:
  the launcher starts this command on every rank.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from baichuan.units import size_arg

HELP = "Pre-train a Baichuan model with DeepSpeed (shards or a text directory; exact resume)."


def _override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


# Numbers such as -1e-3 are values, not options (argparse's own pattern misses exponents), so that
# `--lr -1e-3` reaches validation and is refused there with the flag named; so is a negative
# mixture weight (`--data -1:shards/`).
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(:.*)?$|^-(inf|nan)(:.*)?$", re.IGNORECASE | re.DOTALL)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p._negative_number_matcher = _NEGATIVE_NUMBER  # type: ignore[attr-defined]
    g = p.add_argument_group("run")
    g.add_argument("--config", help="TrainConfig JSON (e.g. a run's train_config.json); flags below override it")
    g.add_argument("--data", nargs="+", metavar="[WEIGHT:]PATH",
                   help="`baichuan tokenize` output directory, or a directory of UTF-8 text files (one document per "
                        "line); or a weighted mixture of shard directories: 0.7:zh_shards/ 0.3:en_shards/")
    g.add_argument("--output-dir", help="run directory: checkpoints, metrics.jsonl, tensorboard/, loss.png")
    g.add_argument("--model", help="model preset (7b, small, tiny) or a config.json path [7b]")
    g.add_argument("--model-override", action="append", type=_override, default=None, metavar="KEY=VALUE",
                   help="ModelConfig field override, repeatable (e.g. num_hidden_layers=8)")
    g.add_argument("--init-from", help="checkpoint to start from (continued pre-training): a native model "
                   "folder, a transformers folder or a `baichuan train` checkpoints folder")
    g.add_argument("--tokenizer", help="tokenizer .model (required for a text directory; checked against shards)")
    g.add_argument("--max-length", type=int, help="tokens per training sequence [4096]")
    g.add_argument("--rope-scaling", metavar="TYPE:FACTOR",
                   help="RoPE scaling for a longer window: linear, dynamic or yarn, e.g. yarn:4 with "
                        "--init-from MODEL --max-length 16384 (docs/model.md, long context)")
    g.add_argument("--steps", type=int, help="optimizer steps in total [1000]")
    g.add_argument("--seed", type=int, help="data shuffle and init seed [1234]")
    g.add_argument("--encode-threads", type=int,
                   help="tokenizer threads per rank for a text directory [all cores; set cores/ranks on shared nodes]")
    g.add_argument("--resume", action="store_true", default=None, help="continue from <output-dir>/checkpoints/latest")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="delete the previous run in --output-dir first (only files `baichuan train` wrote there)")
    o = p.add_argument_group("optimisation (override the DeepSpeed JSON)")
    o.add_argument("--deepspeed-config", "--deepspeed_config", dest="deepspeed_config",
                   help="DeepSpeed JSON (default: built-in, same as config/deepspeed.json)")
    o.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)  # upstream train.sh compatibility
    o.add_argument("--micro-batch-size", type=int)
    o.add_argument("--gradient-accumulation-steps", type=int)
    o.add_argument("--lr", type=float, help="peak learning rate [3e-4]")
    o.add_argument("--min-lr-ratio", type=float, help="cosine end as a fraction of the peak [0.1]")
    o.add_argument("--warmup-steps", type=int, help="linear warm-up steps [2000, capped at --steps]")
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--grad-clip", type=float)
    o.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3))
    o.add_argument("--precision", choices=("bf16", "fp16", "fp32"))
    o.add_argument("--activation-checkpointing", action="store_true", default=None)
    o.add_argument("--attn-backend", choices=("auto", "sdpa", "eager", "xformers"))
    o.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (engine.compile()); first steps are slow while it compiles")
    o.add_argument("--chunked-ce", type=int, help="rows per cross-entropy chunk, 0 = plain fp32 logits [1024]")
    v = p.add_argument_group("validation")
    v.add_argument("--eval-data", nargs="+", metavar="[WEIGHT:]PATH",
                   help="held-out shards (or a weighted mixture, as --data): validation loss and perplexity")
    v.add_argument("--eval-every", type=int, help="evaluate every N optimizer steps and at the end [1000]")
    v.add_argument("--eval-tokens", type=size_arg, help="target tokens evaluated each time, e.g. 1M [1Mi]")
    c = p.add_argument_group("checkpoints and logging")
    c.add_argument("--save-every", type=int, help="checkpoint every N steps (and at the end); 0 = never (throughput runs) [1000]")
    c.add_argument("--keep-last", type=int, help="keep the newest K checkpoints [3]")
    c.add_argument("--log-every", type=int, help="print a log line every N steps [10]")
    c.add_argument("--max-nonfinite-in-row", type=int, help="stop after N NaN/inf micro-batches in a row [10]")
    c.add_argument("--no-tensorboard", action="store_true")
    c.add_argument("--no-plot", action="store_true")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--peak-tflops", type=float, help="per-device peak for MFU [989, H100/H200 dense bf16]")
    lg = p.add_argument_group("launch")
    lg.add_argument("--num-procs", type=int, help="start N local ranks through the deepspeed launcher")
    lg.add_argument("--hostfile", help="start ranks on the hosts of this DeepSpeed hostfile")
    lg.add_argument("--master-port", type=int)
    lg.add_argument("--launcher-args", default="", help=argparse.SUPPRESS)  # scripts/train.sh: DS_LAUNCH_ARGS
    f = p.add_argument_group("failures (docs/training.md, Failures and recovery)")
    f.add_argument("--max-restarts", type=int,
                   help="when a rank fails or hangs, stop every rank and relaunch with --resume from the newest "
                        "verified checkpoint, up to N times (a one-process run goes through the launcher) [0]")
    f.add_argument("--hang-timeout", type=float, metavar="SECONDS",
                   help="abort (dumping every rank's Python stacks into OUTPUT/faults/) when no step completes for "
                        "this long; 0 = off [10x the median step time, at least 300 s]")
    f.add_argument("--collective-timeout", type=float, metavar="SECONDS",
                   help="timeout of the process group's collectives (gloo/NCCL) [1800]")
    f.add_argument("--debug-fault", help=argparse.SUPPRESS)  # tests: KIND:RANK:STEP[:ATTEMPTS]
    lg.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


_FIELDS = {
    "output_dir": "output_dir", "model": "model", "init_from": "init_from",
    "tokenizer": "tokenizer", "max_length": "max_length", "steps": "steps", "seed": "seed",
    "resume": "resume", "deepspeed_config": "deepspeed_config", "micro_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "lr": "lr", "min_lr_ratio": "min_lr_ratio",
    "warmup_steps": "warmup_steps", "weight_decay": "weight_decay", "grad_clip": "grad_clip",
    "zero_stage": "zero_stage", "precision": "precision", "activation_checkpointing": "activation_checkpointing",
    "attn_backend": "attn_backend", "chunked_ce": "chunked_ce", "save_every": "save_every",
    "keep_last": "keep_last", "log_every": "log_every", "max_nonfinite_in_row": "max_nonfinite_in_row",
    "peak_tflops": "peak_tflops", "encode_threads": "encode_threads", "compile": "compile",
    "rope_scaling": "rope_scaling", "eval_every": "eval_every", "eval_tokens": "eval_tokens",
    "overwrite": "overwrite",
}


def config_from_args(args: argparse.Namespace):
    from baichuan.train_config import TrainConfig

    cfg = TrainConfig.from_json_file(args.config).without_launch_state() if args.config else TrainConfig()
    for arg, name in _FIELDS.items():
        v = getattr(args, arg, None)
        if v is not None:
            setattr(cfg, name, v)
    for name in ("data", "eval_data"):  # one entry stays a plain path (today's meaning)
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v[0] if len(v) == 1 else list(v))
    if args.model_override:
        cfg.model_overrides = {**cfg.model_overrides, **dict(args.model_override)}
    if args.no_tensorboard:
        cfg.tensorboard = False
    if args.no_plot:
        cfg.plot = False
    if args.no_progress:
        cfg.progress = False
    for name in ("max_restarts", "hang_timeout", "collective_timeout", "debug_fault"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    return cfg


def run(args: argparse.Namespace) -> int:
    """Everything that can be checked is checked here, in this process, before DeepSpeed starts:
    the flags, the data and tokenizer, the model config, and the run directory (a previous run is
    refused without --resume/--overwrite); a problem is one line and exit status 2."""
    try:
        cfg = config_from_args(args)
        launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if not launched:
            from baichuan.train import preflight

            cfg.validate()
            if args.num_procs is not None and args.num_procs <= 0:
                raise ValueError(f"--num-procs must be positive, got {args.num_procs}")
            if args.hostfile:
                from baichuan.launch import parse_hostfile

                parse_hostfile(args.hostfile)
            preflight(cfg)
            if args.num_procs or args.hostfile or cfg.max_restarts:  # restarts need the launcher
                import shlex

                from baichuan.launch import launch

                return launch(cfg, args.num_procs, args.hostfile, args.master_port,
                              launcher_args=shlex.split(args.launcher_args))
            from baichuan.train import prepare_run_dir

            prepare_run_dir(cfg)
            cfg = cfg.for_ranks()
    except (ValueError, FileNotFoundError) as e:
        print(f"baichuan train: error: {e}", file=sys.stderr)
        return 2
    # One process (or a rank started by an outside launcher, which baichuan.train checks itself).
    from baichuan.train import run_and_report, stop_on_sigterm

    if not launched:
        stop_on_sigterm()
    return run_and_report(cfg)
