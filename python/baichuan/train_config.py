"""The training run's configuration: one dataclass from the command line down.

``TrainConfig`` holds what a run needs besides the DeepSpeed JSON (``config/deepspeed.json``
shape: ZeRO stage, precision, optimizer, schedule). :func:`build_deepspeed_config` merges the two:
the JSON file gives the defaults (as upstream's ``--deepspeed_config``), the dataclass fields that
are set (not ``None``) override it, so ``baichuan train --lr 1e-4`` and an edited JSON both work.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baichuan.units import H100_BF16_PEAK_TFLOPS, size_arg

PRECISIONS = ("bf16", "fp16", "fp32")

# The fault watchdog's automatic limit (baichuan.faults): HANG_FACTOR x the median step time, never
# below HANG_FLOOR_S seconds.
HANG_FLOOR_S = 300.0
HANG_FACTOR = 10.0

# The defaults used when no --deepspeed-config is given; config/deepspeed.json is the same content.
DEFAULT_DEEPSPEED: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "prescale_gradients": False,
    "zero_allow_untested_optimizer": True,
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "torch_adam": True},
    },
    "scheduler": {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": 100000,
            "warmup_num_steps": 2000,
            "warmup_type": "linear",
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.1,
        },
    },
    "tensorboard": {"enabled": True, "output_path": "logs/", "job_name": "baichuan-7b-pt"},
    "zero_optimization": {
        "stage": 2,
        "contiguous_gradients": False,
        "allgather_bucket_size": 1e8,
        "reduce_bucket_size": 1e8,
        "overlap_comm": True,
        "reduce_scatter": True,
    },
    "steps_per_print": 1000000,
    "gradient_clipping": 1.0,
    "wall_clock_breakdown": False,
    "bf16": {"enabled": True},
}


def _arg(default: Any = None, help: str | None = None, **meta: Any) -> Any:
    """A field with its command-line flag's metadata (baichuan.cli_fields)."""
    return field(default=default, metadata={"help": help, **meta})


_DS_OPT = DEFAULT_DEEPSPEED["optimizer"]["params"]
_DS_SCHED = DEFAULT_DEEPSPEED["scheduler"]["params"]


def _from_json(value: Any, what: str = "") -> str:
    """How ``--help`` shows a default that the DeepSpeed JSON gives (``DEFAULT_DEEPSPEED``)."""
    return f"{value:g} from the DeepSpeed JSON{what}" if isinstance(value, float) else f"{value} from the DeepSpeed JSON{what}"


@dataclass
class TrainConfig:
    """A training run. Paths are checked when the run starts (``baichuan.train``).

    The ``metadata`` of a field is its ``baichuan train`` flag (``baichuan.cli_fields``): the
    defaults here are the command's defaults.
    """

    # A shard directory or a text directory, or a weighted mixture of shard directories:
    # ["0.7:zh/", "0.3:en/"] (baichuan.mixture; the same strings as `--data 0.7:zh/ 0.3:en/`).
    data: str | list[str] = _arg(
        "", "`baichuan tokenize` output directory, or a directory of UTF-8 text files (one document per "
        "line); or a weighted mixture of shard directories: 0.7:zh_shards/ 0.3:en_shards/",
        nargs="+", metavar="[WEIGHT:]PATH", show_default=None)
    output_dir: str = _arg("runs/baichuan", "run directory: checkpoints, metrics.jsonl, tensorboard/, loss.png")
    # Model: a preset name ("7b", "small", "tiny") or a config.json path; overrides are ModelConfig fields.
    model: str = _arg("7b", "model preset (7b, small, tiny) or a config.json path")
    model_overrides: dict[str, Any] = field(default_factory=dict)  # flag: --model-override KEY=VALUE
    # Start from these weights (a native model folder from `baichuan.checkpoint.save_model`).
    init_from: str | None = _arg(None, "checkpoint to start from (continued pre-training): a native model "
                                 "folder, a transformers folder or a `baichuan train` checkpoints folder")
    # The tokenizer .model: needed for a text directory; for shards its sha256 is checked against the manifest.
    tokenizer: str | None = _arg(None, "tokenizer .model (required for a text directory; checked against shards)")
    max_length: int = _arg(4096, "tokens per training sequence")
    # RoPE scaling for a longer window, "TYPE:FACTOR" (linear, dynamic, yarn), e.g. "yarn:4"; applied
    # to the model config of a new run (--init-from or a preset), kept from the checkpoint on resume.
    rope_scaling: str | None = _arg(None, "RoPE scaling for a longer window: linear, dynamic or yarn, e.g. yarn:4 "
                                    "with --init-from MODEL --max-length 16384 (docs/model.md, long context)",
                                    metavar="TYPE:FACTOR")
    steps: int = _arg(1000, "optimizer steps in total")
    seed: int = _arg(1234, "data shuffle and init seed")
    # DeepSpeed JSON giving the defaults below; None means DEFAULT_DEEPSPEED.
    deepspeed_config: str | None = _arg(None, "DeepSpeed JSON (default: built-in, same as config/deepspeed.json)",
                                        aliases=("--deepspeed_config",))
    # Overrides of the DeepSpeed JSON (None: keep the JSON's value).
    micro_batch_size: int | None = _arg(None, "micro-batch per device",
                                        show_default=_from_json(DEFAULT_DEEPSPEED["train_micro_batch_size_per_gpu"]))
    gradient_accumulation_steps: int | None = _arg(
        None, "micro-batches per optimizer step", show_default=_from_json(DEFAULT_DEEPSPEED["gradient_accumulation_steps"]))
    lr: float | None = _arg(None, "peak learning rate", show_default=_from_json(_DS_OPT["lr"]))
    min_lr_ratio: float | None = _arg(None, "cosine end as a fraction of the peak",
                                      show_default=_from_json(_DS_SCHED["cos_min_ratio"]))
    warmup_steps: int | None = _arg(None, "linear warm-up steps",
                                    show_default=_from_json(_DS_SCHED["warmup_num_steps"], ", capped at --steps"))
    weight_decay: float | None = _arg(None, "AdamW weight decay", show_default=_from_json(_DS_OPT["weight_decay"]))
    grad_clip: float | None = _arg(None, "gradient clipping norm",
                                   show_default=_from_json(DEFAULT_DEEPSPEED["gradient_clipping"]))
    zero_stage: int | None = _arg(None, "ZeRO stage", choices=(0, 1, 2, 3),
                                  show_default=_from_json(DEFAULT_DEEPSPEED["zero_optimization"]["stage"]))
    precision: str | None = _arg(None, "training precision", choices=PRECISIONS, show_default="bf16 from the DeepSpeed JSON")
    # Runtime.
    activation_checkpointing: bool = _arg(False, "recompute each layer's activations in the backward pass")
    attn_backend: str | None = _arg(None, "attention implementation", choices=("auto", "sdpa", "eager", "xformers"),
                                    show_default="the model config's (auto)")
    chunked_ce: int = _arg(1024, "rows per cross-entropy chunk, 0 = plain fp32 logits")
    compile: bool = _arg(False, "torch.compile the model (engine.compile()); first steps are slow while it compiles")
    save_every: int = _arg(1000, "checkpoint every N steps (and at the end); 0 = never (throughput runs)")
    keep_last: int = _arg(3, "keep the newest K checkpoints")
    log_every: int = _arg(10, "print a log line every N steps")
    max_nonfinite_in_row: int = _arg(10, "stop after N NaN/inf micro-batches in a row")
    resume: bool = _arg(False, "continue from <output-dir>/checkpoints/latest")
    # Delete a previous run's files in output_dir first (only what `baichuan train` wrote there;
    # baichuan.safety). Never written to a run's train_config.json (see ``for_ranks``).
    overwrite: bool = _arg(False, "delete the previous run in --output-dir first (only files `baichuan train` wrote there)")
    tensorboard: bool = _arg(True, "do not write TensorBoard logs", negate="--no-tensorboard")
    plot: bool = _arg(True, "do not draw loss.png", negate="--no-plot")
    progress: bool = _arg(True, "no progress bar", negate="--no-progress")
    dist_backend: str | None = None  # default: nccl on CUDA, gloo on CPU (no flag)
    peak_tflops: float = _arg(H100_BF16_PEAK_TFLOPS, "per-device peak TFLOP/s for MFU (H100/H200 SXM dense bf16)")
    encode_threads: int | None = _arg(None, "tokenizer threads per rank for a text directory",
                                      show_default="all cores; set cores/ranks on shared nodes")
    # Held-out validation (baichuan.validation): shards or a mixture, as `data`; None = none.
    eval_data: str | list[str] | None = _arg(
        None, "held-out shards (or a weighted mixture, as --data): validation loss and perplexity",
        nargs="+", metavar="[WEIGHT:]PATH")
    eval_every: int = _arg(1000, "evaluate every N optimizer steps and at the end")  # and at the last step
    eval_tokens: int = _arg(1 << 20, "target tokens evaluated each time (the first ones of each source), e.g. 1M",
                            type=size_arg, show_default="1Mi")
    # Testing aid: steps (1-based micro-batch counter) whose loss is replaced by NaN, to exercise the guard.
    inject_nonfinite: list[int] = field(default_factory=list)  # no flag
    # Fault tolerance (docs/training.md, "Failures and recovery"). Relaunches after a rank fails
    # (launcher only, baichuan.launch); the watchdog's limit in seconds without a completed step
    # (None: 10x the median step time, at least HANG_FLOOR_S; 0: off); the process group's timeout.
    max_restarts: int = _arg(0, "when a rank fails or hangs, stop every rank and relaunch with --resume from the "
                             "newest verified checkpoint, up to N times (a one-process run goes through the launcher)")
    hang_timeout: float | None = _arg(
        None, "abort (dumping every rank's Python stacks into OUTPUT/faults/) when no step completes for this long; "
        "0 = off", metavar="SECONDS", show_default=f"{HANG_FACTOR:g}x the median step time, at least {HANG_FLOOR_S:g} s")
    collective_timeout: float = _arg(1800.0, "timeout of the process group's collectives (gloo/NCCL)", metavar="SECONDS")
    # Testing aid (hidden --debug-fault): "kill|stall|write-error:RANK:STEP[:ATTEMPTS]" makes rank RANK
    # SIGKILL itself / sleep / fail to write its checkpoint at step STEP, in the first ATTEMPTS launches.
    debug_fault: str | None = _arg(None, argparse.SUPPRESS)
    # Set by the launcher for the ranks of one launch, never taken from --config: the checkpoint it
    # verified for --resume, the launch number (0 = first) and the restart being recovered from.
    resume_tag: str | None = None
    attempt: int = 0
    restart: dict[str, Any] | None = None

    def validate(self) -> None:
        """Check every field that needs no file (sizes, rates, names); ValueError names the flag."""
        if not self.data:
            raise ValueError("no training data given (--data: a `baichuan tokenize` output or a directory of text files)")
        from baichuan.mixture import parse_sources

        parse_sources(self.data, "--data")
        if self.eval_data is not None:
            parse_sources(self.eval_data, "--eval-data")
        if not self.output_dir:
            raise ValueError("no output directory given (--output-dir)")
        if self.save_every < 0:
            raise ValueError(f"--save-every must be >= 0 (0 = no checkpoints), got {self.save_every}")
        for name in ("max_length", "steps", "keep_last", "log_every", "max_nonfinite_in_row", "eval_every", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.rope_scaling is not None:
            from baichuan.config import parse_rope_scaling

            parse_rope_scaling(self.rope_scaling)
        if self.chunked_ce < 0:
            raise ValueError(f"--chunked-ce must be >= 0, got {self.chunked_ce}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"--zero-stage must be 0..3, got {self.zero_stage}")
        for name in ("micro_batch_size", "gradient_accumulation_steps", "warmup_steps", "encode_threads"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{_flag(name)} must be positive, got {v}")
        _check_number("lr", self.lr, low=0.0, low_open=True)
        _check_number("peak_tflops", self.peak_tflops, low=0.0, low_open=True)
        _check_number("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("grad_clip", self.grad_clip, low=0.0)
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume contradict each other; pass one of them")
        if self.max_restarts < 0:
            raise ValueError(f"--max-restarts must be >= 0, got {self.max_restarts}")
        _check_number("hang_timeout", self.hang_timeout, low=0.0)
        _check_number("collective_timeout", self.collective_timeout, low=0.0, low_open=True)
        if self.debug_fault is not None:
            parse_debug_fault(self.debug_fault)

    def inputs(self) -> list[str]:
        """The files and folders the run reads (``--overwrite`` never deletes one of them)."""
        from baichuan.mixture import source_paths

        paths = [*source_paths(self.data), self.tokenizer, self.init_from, self.deepspeed_config]
        if self.eval_data is not None:
            paths += source_paths(self.eval_data)
        if self.model.endswith(".json") or os.sep in self.model:
            paths.append(self.model)
        return [p for p in paths if p]

    def for_ranks(self) -> TrainConfig:
        """The config the launched ranks get: the run directory is prepared already (no overwrite)."""
        return dataclasses.replace(self, overwrite=False)

    def without_launch_state(self) -> TrainConfig:
        """This config without the fields one launch sets for its ranks (a run's train_config.json
        read back with --config starts a new launch)."""
        return dataclasses.replace(self, resume_tag=None, attempt=0, restart=None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"training config not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


DEBUG_FAULTS = ("kill", "stall", "write-error")


def parse_debug_fault(text: str) -> tuple[str, int, int, int | None]:
    """``KIND:RANK:STEP[:ATTEMPTS]`` -> (kind, rank, step, attempts or None = every launch)."""
    parts = text.split(":")
    try:
        if len(parts) not in (3, 4) or parts[0] not in DEBUG_FAULTS:
            raise ValueError
        rank, step = int(parts[1]), int(parts[2])
        attempts = int(parts[3]) if len(parts) == 4 else None
        if rank < 0 or step <= 0 or (attempts is not None and attempts <= 0):
            raise ValueError
    except ValueError:
        raise ValueError(f"--debug-fault: expected {'|'.join(DEBUG_FAULTS)}:RANK:STEP[:ATTEMPTS], got {text!r}") from None
    return parts[0], rank, step, attempts


def _check_number(name: str, v: float | None, low: float, high: float | None = None, low_open: bool = False) -> None:
    """``v`` (when set) is a finite number >= ``low`` (> with ``low_open``) and <= ``high``."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{_flag(name)} must be a finite number, got {v!r}")
    if v < low or (low_open and v == low) or (high is not None and v > high):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        bound += f" and <= {high:g}" if high is not None else ""
        raise ValueError(f"{_flag(name)} must be {bound}, got {v:g}")


def load_deepspeed_json(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if path is None:
        return copy.deepcopy(DEFAULT_DEEPSPEED)
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"DeepSpeed config not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read the DeepSpeed config ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the DeepSpeed config must be a JSON object")
    return data


def build_deepspeed_config(cfg: TrainConfig, *, cpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for this run (file defaults + ``cfg`` overrides)."""
    ds = load_deepspeed_json(cfg.deepspeed_config)
    if cfg.micro_batch_size is not None:
        ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    if cfg.gradient_accumulation_steps is not None:
        ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = opt.setdefault("params", {})
    if cfg.lr is not None:
        params["lr"] = cfg.lr
    if cfg.weight_decay is not None:
        params["weight_decay"] = cfg.weight_decay
    if cpu:
        params["torch_adam"] = True  # DeepSpeed's fused Adam is a CUDA kernel
    elif params.get("torch_adam") and "fused" not in params and "foreach" not in params:
        params["fused"] = True  # torch's fused AdamW kernel: no nvcc build, one launch per step
    if cfg.grad_clip is not None:
        ds["gradient_clipping"] = cfg.grad_clip
    sched = ds.get("scheduler")
    if sched is not None and sched.get("type") == "WarmupCosineLR":
        sp = sched.setdefault("params", {})
        sp["total_num_steps"] = cfg.steps
        if cfg.warmup_steps is not None:
            sp["warmup_num_steps"] = cfg.warmup_steps
        sp["warmup_num_steps"] = max(1, min(int(sp.get("warmup_num_steps", 1)), cfg.steps))
        if cfg.min_lr_ratio is not None:
            sp["cos_min_ratio"] = cfg.min_lr_ratio
    zero = ds.setdefault("zero_optimization", {"stage": 2})
    if cfg.zero_stage is not None:
        zero["stage"] = cfg.zero_stage
    if zero.get("stage") == 3:
        # ZeRO-3 keeps no reduce_scatter/allgather bucket semantics of stage 2.
        for key in ("allgather_bucket_size", "reduce_scatter"):
            zero.pop(key, None)
    precision = cfg.precision
    if precision is None:
        precision = "bf16" if ds.get("bf16", {}).get("enabled") else "fp16" if ds.get("fp16", {}).get("enabled") else "fp32"
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    tb = ds.setdefault("tensorboard", {})
    if not cfg.tensorboard:
        tb["enabled"] = False
    else:
        tb["output_path"] = str(Path(cfg.output_dir) / "tensorboard")
        tb.setdefault("job_name", "deepspeed")
    ds["steps_per_print"] = max(int(ds.get("steps_per_print", 1000000)), 1000000)
    return ds


def precision_of(ds: dict[str, Any]) -> str:
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"
