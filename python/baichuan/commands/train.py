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
from typing import Any

from baichuan.cli_fields import add_dataclass_arguments, dataclass_from_args
from baichuan.errors import as_user_error

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


# TrainConfig fields by flag group (their flags, types, help and defaults come from the dataclass,
# baichuan.cli_fields); the fields without a flag are listed in NO_FLAG.
GROUPS = {
    "run": ["data", "output_dir", "model", "init_from", "tokenizer", "max_length", "rope_scaling", "steps",
            "seed", "encode_threads", "resume", "overwrite"],
    "optimisation (override the DeepSpeed JSON)": [
        "deepspeed_config", "micro_batch_size", "gradient_accumulation_steps", "lr", "min_lr_ratio",
        "warmup_steps", "weight_decay", "grad_clip", "zero_stage", "precision", "activation_checkpointing",
        "attn_backend", "compile", "chunked_ce"],
    "validation": ["eval_data", "eval_every", "eval_tokens"],
    "checkpoints and logging": ["save_every", "keep_last", "log_every", "max_nonfinite_in_row", "tensorboard",
                                "plot", "progress", "peak_tflops"],
    "failures (docs/training.md, Failures and recovery)": [
        "max_restarts", "hang_timeout", "collective_timeout", "debug_fault"],
}
# model_overrides: --model-override KEY=VALUE (merged into the --config's); the others: no flag
# (dist_backend and inject_nonfinite are set in a --config JSON; the launch state by the launcher).
NO_FLAG = ("model_overrides", "dist_backend", "inject_nonfinite", "resume_tag", "attempt", "restart")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from baichuan.train_config import TrainConfig

    p._negative_number_matcher = _NEGATIVE_NUMBER  # type: ignore[attr-defined]
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    g = groups["run"]
    g.add_argument("--config", help="TrainConfig JSON (e.g. a run's train_config.json); flags below override it")
    g.add_argument("--model-override", action="append", type=_override, default=None, metavar="KEY=VALUE",
                   help="ModelConfig field override, repeatable (e.g. num_hidden_layers=8)")
    for title, names in GROUPS.items():
        add_dataclass_arguments(groups[title], TrainConfig, names, defaults=False)
    o = groups["optimisation (override the DeepSpeed JSON)"]
    o.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)  # upstream train.sh compatibility
    lg = p.add_argument_group("launch")
    lg.add_argument("--num-procs", type=int, help="start N local ranks through the deepspeed launcher")
    lg.add_argument("--hostfile", help="start ranks on the hosts of this DeepSpeed hostfile")
    lg.add_argument("--master-port", type=int)
    lg.add_argument("--launcher-args", default="", help=argparse.SUPPRESS)  # scripts/train.sh: DS_LAUNCH_ARGS
    lg.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace):
    from baichuan.train_config import TrainConfig

    base = TrainConfig.from_json_file(args.config).without_launch_state() if args.config else TrainConfig()
    values = {}
    for name in ("data", "eval_data"):  # one entry stays a plain path (today's meaning)
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v[0] if len(v) == 1 else list(v)
    if args.model_override:
        values["model_overrides"] = {**base.model_overrides, **dict(args.model_override)}
    return dataclass_from_args(args, TrainConfig, base, [n for names in GROUPS.values() for n in names], **values)


def run(args: argparse.Namespace) -> int:
    """Everything that can be checked is checked here, in this process, before DeepSpeed starts:
    the flags, the data and tokenizer, the model config, and the run directory (a previous run is
    refused without --resume/--overwrite); a problem is one line and exit status 2."""
    with as_user_error(ValueError):  # and OSError, BaichuanError: printed by baichuan.cli
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
    # One process (or a rank started by an outside launcher, which baichuan.train checks itself).
    from baichuan.train import run_and_report, stop_on_sigterm

    if not launched:
        stop_on_sigterm()
    return run_and_report(cfg)
