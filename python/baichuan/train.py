"""The DeepSpeed training loop: engine, schedule, data position, checkpoints, logging.

Entry points:

* :func:`run_training(cfg)` runs one rank. Under a launcher (``deepspeed``, ``torchrun``) it reads
  ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` once, here; without one it is a world of one process.
* ``python -m baichuan.train --config run.json`` is what :func:`baichuan.launch.launch` starts on
  each rank through the ``deepspeed`` launcher (``baichuan train --num-procs N``).

Shape of a rank's run: :func:`plan_run` (pure, no torch: resume point, tokenizer sha256, model and
DeepSpeed config), then :class:`Trainer` (``build``, ``train_step(batch)``, ``train``). The
checkpoint layout belongs to :class:`baichuan.checkpoint.Checkpointer`, the log lines, metrics
and the loss curve to :mod:`baichuan.metrics`.

Run directory (``cfg.output_dir``)::

    run.json                  the TrainConfig, model config and tokenizer sha256 of the run
    metrics.jsonl             one JSON line per optimizer step (rank 0)
    tensorboard/              TensorBoard events (ours under train/, DeepSpeed's own beside)
    loss.png                  loss curve, written at the end
    checkpoints/latest        tag of the newest complete checkpoint (written last)
    checkpoints/step-N/       DeepSpeed checkpoint + trainer_state_rankR.json (data position,
                              counters) + rng_state_rankR.safetensors + model/ (native folder:
                              config.json + model.safetensors [+ tokenizer.model])

A step is one optimizer step: ``gradient_accumulation_steps`` micro-batches on every rank, each
micro-batch ``(micro_batch, max_length + 1)`` tokens split into inputs ``[:, :-1]`` and targets
``[:, 1:]``. A micro-batch whose loss is NaN/inf on any rank is skipped on all ranks (no backward,
no DeepSpeed micro-step, so accumulation boundaries stay aligned) and counted; after
``max_nonfinite_in_row`` such micro-batches in a row the run stops with an error.

Throughput: tokens/s counts target tokens of all ranks; TFLOPS per device =
``flops_per_token(config, max_length) * tokens/s / world_size`` with
``flops_per_token = 6 * N_nonembed + 12 * layers * hidden * seq`` (``baichuan.model``), and
MFU = TFLOPS / ``peak_tflops`` (989.4 for H100/H200 dense bf16, baichuan.units).
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baichuan.checkpoint import (  # noqa: F401 - the checkpoint layout's functions, re-exported
    Checkpointer,
    latest_model_dir,
    latest_tag,
    prune_checkpoints,
    step_tag,
    write_atomic,
)
from baichuan.errors import TrainingError
from baichuan.metrics import Logger, gather_step_stats, plot_loss_curve, step_record
from baichuan.train_config import TrainConfig, build_deepspeed_config, precision_of


class Terminated(KeyboardInterrupt):
    """SIGTERM to a one-process `baichuan train` (see :func:`stop_on_sigterm`): stops it like Ctrl-C."""


def stop_on_sigterm() -> None:
    """In a one-process run, SIGTERM stops the loop as Ctrl-C does: one line, exit status 143."""
    import signal

    def handler(_signum: int, _frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_env(cls) -> DistEnv:
        """The launcher's rank variables (the only environment this package reads)."""
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        return cls(rank, local, world)


@dataclass
class TrainResult:
    steps: int
    losses: dict[int, float] = field(default_factory=dict)
    last_checkpoint: str | None = None
    nonfinite_skipped: int = 0


# ----------------------------------------------------------------------------- checkpoint files
def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Checkpointer.of_run(cfg.output_dir).directory


# ----------------------------------------------------------------------------------- the run
def _model_config(cfg: TrainConfig, vocab_hint: int | None, saved: dict[str, Any] | None):
    from baichuan.config import ModelConfig, scaled_for_training

    if saved is not None:  # resuming: the checkpoint's architecture wins
        mc = ModelConfig.from_dict(saved)
    elif cfg.init_from:
        from baichuan.checkpoint import checkpoint_config

        mc = checkpoint_config(cfg.init_from)
    elif cfg.model.endswith(".json") or os.sep in cfg.model:
        mc = ModelConfig.from_json_file(cfg.model)
    else:
        overrides = dict(cfg.model_overrides)
        if "vocab_size" not in overrides and vocab_hint is not None:
            overrides["vocab_size"] = vocab_hint
        return scaled_for_training(ModelConfig.preset(cfg.model, **overrides), cfg.rope_scaling, cfg.max_length)
    for k, v in cfg.model_overrides.items():
        if saved is None or k in ("attn_backend", "gradient_checkpointing"):
            setattr(mc, k, v)
    mc.validate()
    # --rope-scaling applies to a new run (resuming keeps the checkpoint's config, scaling included)
    return mc if saved is not None else scaled_for_training(mc, cfg.rope_scaling, cfg.max_length)


def _tokenizer_vocab(cfg: TrainConfig) -> tuple[int | None, str | None]:
    """(vocab_size, sha256) of the data's tokenizer, from the .model file or the shards' manifest."""
    from baichuan.data import ShardManifest, file_sha256, is_shard_dir

    if cfg.tokenizer:
        tp = Path(cfg.tokenizer)
        if not tp.is_file():
            raise TrainingError(f"tokenizer not found: {tp}")
        from baichuan import Tokenizer

        tok = Tokenizer.from_file(tp)
        return tok.vocab_size, file_sha256(tp)
    from baichuan.mixture import first_path

    first = first_path(cfg.data)  # a mixture's sources share one tokenizer (checked when opened)
    if is_shard_dir(first):
        m = ShardManifest.load(first)
        return m.vocab_size, m.tokenizer_sha256
    return None, None


# ----------------------------------------------------------------------- before the ranks start
def _plan_run_dir(cfg: TrainConfig) -> Any:
    from baichuan.safety import plan_output

    return plan_output(cfg.output_dir, "train", overwrite=cfg.overwrite, resume=cfg.resume, inputs=cfg.inputs())


def _apply_run_plan(plan: Any) -> None:
    from baichuan.safety import KINDS

    plan.apply(KINDS["train"].patterns)


def prepare_run_dir(cfg: TrainConfig) -> None:
    """Check the run directory (a previous run needs --resume or --overwrite), delete the previous
    run with --overwrite (only what `baichuan train` wrote), create it and write its marker."""
    _apply_run_plan(_plan_run_dir(cfg))


def preflight(cfg: TrainConfig) -> None:
    """What the ranks would refuse, checked in the launching process before DeepSpeed starts:
    flags, DeepSpeed JSON, data, tokenizer, model config and the run directory (no torch import)."""
    from baichuan import data as data_mod
    from baichuan import mixture

    cfg.validate()
    ds = build_deepspeed_config(cfg, cpu=True)  # reads --deepspeed-config
    specs = mixture.parse_sources(cfg.data, "--data")
    data_path = Path(specs[0].path)
    for spec in specs:
        if not Path(spec.path).exists():
            given = f" (--data {spec.given})" if len(specs) > 1 else ""
            raise data_mod.DataError(f"training data not found: {spec.path}{given}")
    if cfg.init_from and not Path(cfg.init_from).exists():
        raise TrainingError(f"--init-from {cfg.init_from}: not found")
    _plan_run_dir(cfg)
    vocab_hint, data_sha = _tokenizer_vocab(cfg)
    if cfg.resume and Checkpointer(checkpoint_dir(cfg)).has_any():  # checked when chosen (faults)
        return  # the checkpoint's recorded model and tokenizer win; the ranks check them
    vocab = _model_config(cfg, vocab_hint, None).vocab_size
    micro = int(ds.get("train_micro_batch_size_per_gpu", 1))
    tok_from = f"--tokenizer {cfg.tokenizer}"
    if len(specs) > 1:
        mixture.load_sources(specs, cfg.max_length + 1, "--data", vocab_size=vocab,
                             expected_sha256=data_sha if cfg.tokenizer else None, expected_from=tok_from)
    elif data_mod.is_shard_dir(data_path) or (data_path.is_dir() and any(data_path.glob("shard-*.bin"))):
        manifest = data_mod.ShardManifest.load(data_path)
        if cfg.tokenizer:
            data_mod.check_tokenizer(manifest, data_sha, f"--tokenizer {cfg.tokenizer}")
        if manifest.vocab_size > vocab:
            raise data_mod.DataError(
                f"{data_path}: the shards' tokenizer has {manifest.vocab_size} tokens, more than the model's vocab_size {vocab}"
            )
        data_mod.ShardSource(manifest, cfg.max_length + 1, micro, 0, 1, cfg.seed, None).close()
    else:
        data_mod.list_text_files(data_path)
        if not cfg.tokenizer:
            raise data_mod.DataError(
                f"{data_path} is a directory of text files: pass the tokenizer (.model) to tokenize it on the fly"
            )
        if vocab_hint is not None and vocab_hint > vocab:
            raise data_mod.DataError(
                f"{cfg.tokenizer}: the tokenizer has {vocab_hint} tokens, more than the model's vocab_size {vocab}"
            )
    if cfg.eval_data is not None:
        mixture.open_eval(cfg.eval_data, seq_len=cfg.max_length + 1, eval_tokens=cfg.eval_tokens, vocab_size=vocab,
                          expected_tokenizer_sha256=data_sha,
                          expected_from=tok_from if cfg.tokenizer else f"the training data, {specs[0].path}").close()


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train one rank; see the module docstring."""
    cfg.validate()
    env = DistEnv.from_env()
    added: list[str] = []
    if env.world_size == 1:  # no launcher: a world of one, for this call only
        from baichuan.extensions import free_port

        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())), ("RANK", "0"),
                           ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            if key not in os.environ:
                os.environ[key] = value
                added.append(key)
    try:
        return _run(cfg, env)
    finally:
        for key in added:
            os.environ.pop(key, None)


# ----------------------------------------------------------------------------- the plan of a run
@dataclass
class RunPlan:
    """What a rank decides before torch and DeepSpeed start (:func:`plan_run`; no torch import)."""

    cfg: TrainConfig
    env: DistEnv
    run_dir_plan: Any  # baichuan.safety's plan of the run directory, applied by rank 0 after the rendezvous
    tag: str | None  # the checkpoint --resume loads (None: a new run)
    record: dict[str, Any] | None  # run.json of the run resumed
    data_sha: str | None  # sha256 of the data's tokenizer (the .model file or the shards' manifest)
    expected_sha: str | None  # the model's tokenizer, when known (run.json, --init-from, --tokenizer)
    expected_from: str  # where expected_sha comes from, for messages
    model_config: Any  # baichuan.config.ModelConfig
    ds_config: dict[str, Any]
    rank_state: dict[str, Any] | None  # this rank's trainer state of the checkpoint resumed
    cuda: bool

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def run_json(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def ckpt_dir(self) -> Path:
        return checkpoint_dir(self.cfg)

    @property
    def micro_batch(self) -> int:
        return int(self.ds_config["train_micro_batch_size_per_gpu"])

    @property
    def grad_accum(self) -> int:
        return int(self.ds_config.get("gradient_accumulation_steps", 1))

    @property
    def zero_stage(self) -> int:
        return int(self.ds_config.get("zero_optimization", {}).get("stage", 0))


def plan_run(cfg: TrainConfig, env: DistEnv | None = None, *, cuda: bool = False) -> RunPlan:
    """Resolve one rank's run without torch: the data exists, the run directory may be used, the
    checkpoint to resume (and its run.json and trainer state), the tokenizer's sha256, the model
    config and the DeepSpeed config (``cuda``: whether the rank trains on a GPU)."""
    from baichuan import data as data_mod
    from baichuan import mixture

    env = env or DistEnv.from_env()
    for spec in mixture.parse_sources(cfg.data, "--data"):
        if not Path(spec.path).exists():
            raise data_mod.DataError(f"training data not found: {spec.path}")
    # Every rank checks the run directory before any rank writes (rank 0 applies it after the
    # rendezvous): a previous run is refused without resume/overwrite (baichuan.safety).
    run_dir_plan = _plan_run_dir(cfg)
    ckpt = Checkpointer(checkpoint_dir(cfg), env.rank, env.world_size)
    tag, record = _resume_point(cfg, env, ckpt)
    vocab_hint, data_sha = _tokenizer_vocab(cfg)
    expected_sha, expected_from = _expected_tokenizer(cfg, record, data_sha)

    # What was recorded when the run started (resume) wins over the command line for the model.
    mcfg = _model_config(cfg, vocab_hint, record.get("model_config") if record else None)
    if cfg.attn_backend is not None:
        mcfg.attn_backend = cfg.attn_backend
    mcfg.gradient_checkpointing = cfg.activation_checkpointing
    ds_config = build_deepspeed_config(cfg, cpu=not cuda)
    plan = RunPlan(cfg, env, run_dir_plan, tag, record, data_sha, expected_sha, expected_from, mcfg, ds_config,
                   None, cuda)
    if tag is not None:
        plan.rank_state = ckpt.trainer_state(tag, plan.zero_stage)
    return plan


def _resume_point(cfg: TrainConfig, env: DistEnv, ckpt: Checkpointer) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint --resume loads and the run.json recorded when the run started."""
    if not cfg.resume:
        return None, None
    tag = _resume_tag(cfg, env, ckpt)
    if tag is None:
        if env.rank == 0:
            print(f"--resume: no checkpoint in {ckpt.directory} yet; starting at step 0", file=sys.stderr, flush=True)
        return None, None
    run_json = Path(cfg.output_dir) / "run.json"
    if not run_json.is_file():
        raise TrainingError(f"cannot resume: {run_json} is missing")
    return tag, json.loads(run_json.read_text(encoding="utf-8"))


def _resume_tag(cfg: TrainConfig, env: DistEnv, ckpt: Checkpointer) -> str | None:
    """The checkpoint --resume loads. Our launcher verified it already (``cfg.resume_tag``); a
    one-process run verifies here, falling back to the previous complete checkpoint with a warning
    (``baichuan.faults.choose_checkpoint``); ranks of another launcher check ``latest`` on local
    rank 0 (before DeepSpeed's start-up collectives, which the others wait in) and refuse a damaged one."""
    if cfg.resume_tag:
        return ckpt.named(cfg.resume_tag)
    if env.world_size == 1:
        from baichuan.faults import choose_checkpoint

        return choose_checkpoint(ckpt.directory, lambda line: print(line, file=sys.stderr, flush=True))
    return ckpt.latest_verified(env.local_rank == 0)


def _expected_tokenizer(cfg: TrainConfig, record: dict[str, Any] | None, data_sha: str | None) -> tuple[str | None, str]:
    """The model's tokenizer (sha256, where it comes from): run.json, then --init-from, then
    --tokenizer; --tokenizer must match it."""
    from baichuan import data as data_mod

    expected_sha = record.get("tokenizer_sha256") if record else None
    expected_from = f"recorded in {Path(cfg.output_dir) / 'run.json'}" if expected_sha else ""
    if cfg.init_from:
        from baichuan.checkpoint import find_tokenizer

        init_tok = find_tokenizer(cfg.init_from)
        if init_tok is not None and not expected_sha:
            expected_sha, expected_from = data_mod.file_sha256(init_tok), str(init_tok)
    if cfg.tokenizer and not expected_sha:
        expected_sha, expected_from = data_sha, f"--tokenizer {cfg.tokenizer}"
    if cfg.tokenizer and expected_sha and data_sha != expected_sha:
        raise data_mod.DataError(
            f"--tokenizer {cfg.tokenizer} is not the model's tokenizer ({expected_from}); sha256 differs"
        )
    return expected_sha, expected_from


def _run(cfg: TrainConfig, env: DistEnv) -> TrainResult:
    import torch

    return Trainer(plan_run(cfg, env, cuda=torch.cuda.is_available())).build().train()


# ----------------------------------------------------------------------------------- the trainer
class Trainer:
    """One rank's training run: :meth:`build` (data, DeepSpeed engine, resume), :meth:`train_step`
    (one micro-batch), :meth:`train` (the loop: metrics, validation, checkpoints)."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan, self.cfg, self.env = plan, plan.cfg, plan.env
        self.is_main = plan.env.rank == 0
        self.ckpt = Checkpointer(plan.ckpt_dir, plan.env.rank, plan.env.world_size)
        self.source: Any = None
        self.eval_set: Any = None
        self.model: Any = None
        self.log: Logger | None = None
        self.tokenizer_sha: str | None = None
        self._step_state(None, None, plan.cfg.chunked_ce, plan.cfg.inject_nonfinite, plan.cfg.max_nonfinite_in_row)

    @classmethod
    def for_engine(cls, engine: Any, device: Any, ce_chunk: int = 0, max_nonfinite_in_row: int = 1 << 62) -> Trainer:
        """A trainer around an engine built elsewhere, for :meth:`train_step` alone (scripts/bench_train.py)."""
        t = cls.__new__(cls)
        t.log = None
        t._step_state(engine, device, ce_chunk, [], max_nonfinite_in_row)
        return t

    def _step_state(self, engine: Any, device: Any, ce_chunk: int, inject_nonfinite: Any, max_in_row: int) -> None:
        self.engine, self.device, self.ce_chunk = engine, device, ce_chunk
        self.inject_nonfinite, self.max_nonfinite_in_row = inject_nonfinite, max_in_row
        self.step = 0  # optimizer steps done
        self.micro = 0  # micro-batches run (skipped ones too)
        self.in_row = 0  # non-finite micro-batches in a row
        self.nonfinite_total = 0
        self.tokens_seen = 0
        self.acc_loss, self.acc_n, self.fingerprint = 0.0, 0, 0  # of the current optimizer step
        self.lr = float("nan")

    def _info(self, msg: str) -> None:
        if self.log is not None:
            self.log.info(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------- build
    def build(self) -> Trainer:
        """Open the data (bad input fails before DeepSpeed starts and the model is built), join the
        ranks, write run.json, build the engine, load the checkpoint resumed."""
        self._open_data()
        plan = self.plan
        init_state = _init_state(self.cfg.init_from, plan.model_config, plan.zero_stage) if (
            self.cfg.init_from and plan.tag is None) else None
        self._init_distributed()
        self._write_run_record()
        self._build_engine(init_state)
        self._resume()
        self._announce()
        from baichuan import faults

        self.fault = faults.DebugFault(self.cfg.debug_fault, self.env.rank, self.cfg.attempt)
        self.watchdog = faults.Watchdog(plan.run_dir, self.env.rank, self.cfg.attempt, self.cfg.hang_timeout).start()
        return self

    def _open_data(self) -> None:
        from baichuan import data as data_mod
        from baichuan import mixture

        cfg, plan, env = self.cfg, self.plan, self.env
        self.source = mixture.open_training_data(
            cfg.data,
            seq_len=cfg.max_length + 1,
            micro_batch=plan.micro_batch,
            rank=env.rank,
            world_size=env.world_size,
            seed=cfg.seed,
            vocab_size=plan.model_config.vocab_size,
            tokenizer_path=cfg.tokenizer,
            expected_tokenizer_sha256=plan.expected_sha,
            expected_from=plan.expected_from,
            state=plan.rank_state["data"] if plan.rank_state else None,
            encode_threads=cfg.encode_threads,
        )
        self.tokenizer_sha = plan.expected_sha or plan.data_sha
        if isinstance(self.source, data_mod.ShardSource):
            self.tokenizer_sha = self.source.manifest.tokenizer_sha256
        elif isinstance(self.source, mixture.MixtureSource):
            self.tokenizer_sha = self.source.readers[0].manifest.tokenizer_sha256
        if cfg.eval_data is not None:
            self.eval_set = mixture.open_eval(
                cfg.eval_data, seq_len=cfg.max_length + 1, eval_tokens=cfg.eval_tokens,
                vocab_size=plan.model_config.vocab_size, expected_tokenizer_sha256=self.tokenizer_sha,
                expected_from=plan.expected_from or "the training data",
            )
            if env.rank == 0:
                for line in mixture.eval_overlap_warnings(cfg.data, cfg.eval_data):
                    print(line, file=sys.stderr, flush=True)

    def _init_distributed(self) -> None:
        from baichuan.extensions import announce_extension_build, use_environment_extensions_dir

        use_environment_extensions_dir()
        import deepspeed
        import torch

        cuda, env = self.plan.cuda, self.env
        if cuda:
            torch.cuda.set_device(env.local_rank)
        self.device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
        if not cuda and env.rank == 0:
            announce_extension_build()
        from datetime import timedelta

        deepspeed.init_distributed(dist_backend=self.cfg.dist_backend or ("nccl" if cuda else "gloo"),
                                   timeout=timedelta(seconds=self.cfg.collective_timeout))  # --collective-timeout
        import torch.distributed as dist

        dist.barrier()  # every rank has checked the run directory (plan_run)
        self.ckpt.barrier = dist.barrier

    def _write_run_record(self) -> None:
        plan = self.plan
        if not self.is_main:
            return
        _apply_run_plan(plan.run_dir_plan)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        if plan.record is None:
            plan.record = {
                "train_config": self.cfg.to_dict(),
                "model_config": plan.model_config.to_dict(),
                "tokenizer_sha256": self.tokenizer_sha,
                "deepspeed_config": plan.ds_config,
                "world_size": self.env.world_size,
            }
            write_atomic(plan.run_json, json.dumps(plan.record, indent=2, sort_keys=True) + "\n")

    def _build_engine(self, init_state: dict[str, Any] | None) -> None:
        import deepspeed
        import torch

        from baichuan.model import BaichuanForCausalLM

        plan = self.plan
        torch.manual_seed(self.cfg.seed)
        if plan.zero_stage == 3:
            model = _build_zero3_model(plan.model_config, plan.ds_config, self.is_main)
        else:
            model = BaichuanForCausalLM(plan.model_config)
        if init_state is not None:
            from baichuan.checkpoint import check_state_dict

            model.load_state_dict(check_state_dict(model, init_state, str(self.cfg.init_from)), strict=True)
            del init_state
        self.model = model
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=plan.ds_config
        )
        if self.cfg.compile:
            self.engine.compile()

    def _resume(self) -> None:
        plan = self.plan
        if plan.tag is not None:
            assert plan.rank_state is not None
            self.step = int(plan.rank_state["step"])
            self.nonfinite_total = int(plan.rank_state.get("nonfinite_total", 0))
            self.tokens_seen = int(plan.rank_state.get("tokens_seen", 0))
            self.ckpt.load(self.engine, plan.tag, self.step)
        self.start_step = self.step
        self.last_saved = self.step if plan.tag is not None else -1
        self.result = TrainResult(steps=self.step, nonfinite_skipped=self.nonfinite_total)

    def _announce(self) -> None:
        from baichuan.model import flops_per_token

        cfg, plan, env = self.cfg, self.plan, self.env
        mcfg = plan.model_config
        self.log = log = Logger(cfg, plan.run_dir, self.is_main, self.start_step)
        self.flops_tok = flops_per_token(mcfg, cfg.max_length)
        self.tokens_per_step = env.world_size * plan.micro_batch * plan.grad_accum * cfg.max_length
        if not self.is_main:
            return
        params = sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters())
        log.info(
            f"model {cfg.model} {params / 1e6:.1f}M params "
            f"(layers={mcfg.num_hidden_layers} hidden={mcfg.hidden_size} vocab={mcfg.vocab_size}); "
            f"{env.world_size} rank(s) on {self.device.type}, ZeRO-{plan.zero_stage}, {precision_of(plan.ds_config)}, "
            f"micro-batch {plan.micro_batch} x accumulation {plan.grad_accum} x seq {cfg.max_length}; "
            f"data: {self.source.describe()}"
            + (f"; resumed from {plan.ckpt_dir / plan.tag} at step {self.start_step}" if plan.tag else "")
        )
        if not cfg.save_every:
            log.info("save_every is 0: no checkpoint will be written")
        if self.eval_set is not None:
            log.info(f"validation every {cfg.eval_every} steps: {self.eval_set.describe()}")
            for name, wanted, have in self.eval_set.short:
                log.info(f"--eval-data {name}: only {have} sequences (of {wanted} wanted); all of them are evaluated")

    # ------------------------------------------------------------------------------- steps
    def next_batch(self) -> Any:
        """The next micro-batch of this rank, checked against the vocabulary, on the device."""
        import torch

        from baichuan import data as data_mod
        from baichuan import mixture

        batch = self.source.next_batch()
        top = int(batch.max())
        vocab = self.plan.model_config.vocab_size
        if top >= vocab:
            where = self.cfg.data
            if isinstance(self.source, mixture.MixtureSource):  # name the source of the offending row
                where = self.source.names[self.source.last_sources[int(batch.max(axis=1).argmax())]]
            raise data_mod.DataError(f"{where}: token id {top} is outside the model's vocabulary ({vocab})")
        self.fingerprint = zlib.crc32(batch.tobytes(), self.fingerprint)
        x = torch.from_numpy(batch)
        return x.pin_memory().to(self.device, non_blocking=True) if self.plan.cuda else x

    def train_step(self, x: Any) -> float | None:
        """One micro-batch ``x`` (token ids on the device, ``(micro_batch, max_length + 1)``): the loss
        inside the model, a non-finite loss skipped on all ranks together, backward and DeepSpeed's
        step (an optimizer step at the accumulation boundary). Returns the loss (None: skipped)."""
        import torch
        import torch.distributed as dist

        self.micro += 1
        loss = self.engine(x[:, :-1], labels=x, ce_chunk=self.ce_chunk).loss  # model.py docstring, Labels
        if self.micro in self.inject_nonfinite:
            loss = loss * float("nan")
        ok = torch.isfinite(loss.detach()).to(torch.float32)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() < 1.0:
            self.in_row += 1
            self.nonfinite_total += 1
            self._info(f"step {self.step + 1}: non-finite loss, micro-batch skipped ({self.in_row} in a row, "
                       f"{self.nonfinite_total} in all)")
            if self.in_row >= self.max_nonfinite_in_row:
                raise TrainingError(
                    f"loss was NaN/inf for {self.in_row} micro-batches in a row (limit max_nonfinite_in_row="
                    f"{self.max_nonfinite_in_row}); stopping. Lower the learning rate or check the data, then "
                    "resume from the last checkpoint"
                )
            return None
        self.in_row = 0
        self.engine.backward(loss)
        self.lr = float(self.engine.get_lr()[0])
        self.engine.step()
        value = float(loss.detach().float().item())
        self.acc_loss += value
        self.acc_n += 1
        return value

    def train(self) -> TrainResult:
        """Run to ``cfg.steps``; a checkpoint every ``save_every`` steps and at the end."""
        from baichuan import mixture

        cfg = self.cfg
        self.t_last = time.perf_counter()
        self.restart_pending = cfg.restart if self.is_main else None
        self.last_epochs: dict[str, int] = (
            self.source.epochs_by_source() if isinstance(self.source, mixture.MixtureSource) else {})
        self.engine.train()
        try:
            while self.step < cfg.steps:
                self.fault.at_step_start(self.step + 1)
                if self.train_step(self.next_batch()) is None:
                    continue
                if self.engine.global_steps == self.step:
                    continue  # inside gradient accumulation
                self._finish_step()
            if cfg.save_every and self.last_saved != self.step:
                self.save(self.step)
        finally:
            self.watchdog.stop()
            self.source.close()
            if self.eval_set is not None:
                self.eval_set.close()
            assert self.log is not None
            self.log.close()
        if self.is_main and cfg.plot:
            png = plot_loss_curve(self.plan.run_dir / "metrics.jsonl", self.plan.run_dir / "loss.png")
            if png:
                self._info(f"loss curve: {png}")
        return self.result

    def _finish_step(self) -> None:
        """After an optimizer step: metrics of all ranks, validation, log, restart record, checkpoint."""
        cfg, env = self.cfg, self.env
        assert self.log is not None
        step = self.step = self.engine.global_steps
        self.tokens_seen += self.tokens_per_step
        dt = time.perf_counter() - self.t_last
        rank_losses, rank_crcs = gather_step_stats(self.acc_loss / max(self.acc_n, 1), self.fingerprint, self.device,
                                                   env.world_size)
        gn = self.engine.get_global_grad_norm()
        record_line = step_record(
            step=step, rank_losses=rank_losses, rank_crcs=rank_crcs, lr=self.lr,
            grad_norm=float(gn) if gn is not None else float("nan"), tokens_per_step=self.tokens_per_step, dt=dt,
            flops_per_token=self.flops_tok, world_size=env.world_size, peak_tflops=cfg.peak_tflops,
            tokens_seen=self.tokens_seen, nonfinite_skipped=self.nonfinite_total,
        )
        self._data_metrics(record_line)
        if self.eval_set is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            from baichuan.validation import evaluate

            record_line.update(evaluate(self.engine, self.eval_set, rank=env.rank, world_size=env.world_size,
                                        micro_batch=self.plan.micro_batch, device=self.device, ce_chunk=cfg.chunked_ce))
        self.result.losses[step] = record_line["loss"]
        self.result.steps = step
        self.result.nonfinite_skipped = self.nonfinite_total
        self.log.step(record_line)
        self.acc_loss, self.acc_n, self.fingerprint = 0.0, 0, 0
        if self.restart_pending:
            from baichuan import faults

            rec = faults.log_recovered(self.plan.run_dir, self.restart_pending, step)
            self.log.info(f"restart {rec['restart']}: first new step {step}, {rec['seconds_to_first_step']:.1f} s "
                          "after the failure was detected")
            self.restart_pending = None
        if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
            self.save(step)
        self.watchdog.step_done(step, dt)
        self.t_last = time.perf_counter()

    def _data_metrics(self, record_line: dict[str, Any]) -> None:
        """Tokens (and epochs) by data source; a line when a mixture's source starts a new epoch."""
        from baichuan import mixture

        if not isinstance(self.source, mixture.MixtureSource):
            record_line["tokens_by_source"] = {mixture.first_path(self.cfg.data): self.tokens_seen}
            return
        record_line["tokens_by_source"] = self.source.tokens_by_source()
        epochs = self.source.epochs_by_source()
        record_line["epochs_by_source"] = epochs
        for name, e in epochs.items():
            if e > self.last_epochs.get(name, e):
                self._info(f"data: {name} exhausted; starting its epoch {e + 1} in a new order (epoch {e} done)")
        self.last_epochs = epochs

    def save(self, step: int) -> None:
        """Checkpoint ``step-<step>`` (``baichuan.checkpoint.Checkpointer``); a write failure is one
        error naming the checkpoint ``latest`` still names."""
        import torch.distributed as dist

        ckpt = self.ckpt
        state = {
            "step": step,
            "data": self.source.state_dict(),
            "nonfinite_total": self.nonfinite_total,
            "tokens_seen": self.tokens_seen,
            "rank": self.env.rank,
            "world_size": self.env.world_size,
        }
        with self.watchdog.paused():  # a save may take minutes; the collective timeout still applies
            try:
                tag_dir, removed = ckpt.save(
                    step, self.engine, state, config=self.plan.model_config, zero_stage=self.plan.zero_stage,
                    tokenizer=self.cfg.tokenizer, client_state={"train_config": self.cfg.to_dict()},
                    keep_last=self.cfg.keep_last, before_write=lambda d: self.fault.at_save(step, d),
                )
                if self.is_main:
                    self._info(f"checkpoint saved: {tag_dir}" + (f" (removed {', '.join(removed)})" if removed else ""))
                self.result.last_checkpoint = str(tag_dir)
                self.last_saved = step
            except OSError as e:  # disk full, I/O error: `latest` still names the previous checkpoint
                d = ckpt.directory
                prev = ckpt.latest_if_any()
                raise TrainingError(
                    f"checkpoint {d / step_tag(step)} could not be written on rank {self.env.rank} "
                    f"({e.strerror or e}{': ' + str(e.filename) if e.filename else ''}); "
                    + (f"{d / 'latest'} still names the previous complete checkpoint {d / prev}"
                       if prev else "no complete checkpoint was written before")
                ) from None
            dist.barrier()  # every rank waits for rank 0's manifest and `latest`



# ------------------------------------------------------------------------------ helpers
def _build_zero3_model(mcfg: Any, ds_config: dict[str, Any], is_main: bool) -> Any:
    """Build the model with parameters partitioned as they are created (``zero.Init``), so no rank
    ever holds the whole model; then initialise each module's weights with the model's own
    ``reset_parameters``, one module at a time with its parameters gathered (rank 0 writes,
    DeepSpeed broadcasts). The model's constructor would otherwise initialise empty partitions."""
    import deepspeed

    from baichuan.model import BaichuanForCausalLM

    class _Deferred(BaichuanForCausalLM):
        def reset_parameters(self) -> None:  # parameters are partitioned here; done below
            pass

    class _OneModule:
        def __init__(self, module: Any, config: Any) -> None:
            self._module, self.config = module, config

        def modules(self) -> list[Any]:
            return [self._module]

    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = _Deferred(mcfg)
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if is_main:
                BaichuanForCausalLM.reset_parameters(_OneModule(module, mcfg))  # type: ignore[arg-type]
    return model


def _init_state(init_from: str, mcfg: Any, zero_stage: int) -> dict[str, Any]:
    """--init-from weights from any checkpoint ``baichuan.hf.load_checkpoint`` reads (never unpickled)."""
    if zero_stage == 3:
        raise TrainingError("--init-from with ZeRO-3 is not supported; start from a ZeRO-2 run or resume")
    from baichuan.checkpoint import load_checkpoint

    return load_checkpoint(init_from, config=mcfg)[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m baichuan.train --config run.json``: one rank (used by the launcher)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m baichuan.train")
    p.add_argument("--config", required=True, help="TrainConfig JSON")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = TrainConfig.from_json_file(args.config)
    return run_and_report(cfg)


def _interrupted_line(cfg: TrainConfig) -> str:
    try:
        tag = latest_tag(checkpoint_dir(cfg))
    except TrainingError:
        tag = None
    where = f"the last complete checkpoint is {checkpoint_dir(cfg) / tag}" if tag else "no checkpoint was completed"
    return f"{where}; continue with --resume (--output-dir {cfg.output_dir})"


def _is_collective_failure(e: BaseException) -> bool:
    """A torch.distributed error from gloo/NCCL (a peer gone, a timeout), not a bug of ours."""
    try:
        import torch.distributed as dist

        if isinstance(e, getattr(dist, "DistError", ())):
            return True
    except ImportError:
        pass
    text = str(e)
    return any(k in text for k in ("/gloo/", "Gloo", "NCCL", "ProcessGroup", "Connection reset by peer",
                                   "Connection closed by peer"))


def run_and_report(cfg: TrainConfig) -> int:
    """Run one rank; a clear one-line error and exit status 2 for bad input."""
    from baichuan.data import DataError

    try:
        run_training(cfg)
    except (DataError, TrainingError, FileNotFoundError, ValueError) as e:
        print(f"baichuan train: error: {e}", file=sys.stderr, flush=True)
        if DistEnv.from_env().world_size > 1 or cfg.attempt or cfg.max_restarts:  # not worth a relaunch
            from baichuan.faults import note_error

            note_error(Path(cfg.output_dir), cfg.attempt, DistEnv.from_env().rank, f"baichuan train: error: {e}")
        return 2
    except RuntimeError as e:
        if not _is_collective_failure(e):
            raise
        # Another rank died or hung: this one's collective broke. One line; the launcher restarts the
        # job (--max-restarts) or reports the failure.
        first = " ".join(str(e).split())[:240]
        print(f"baichuan train: rank {DistEnv.from_env().rank}: a collective failed (another rank failed or "
              f"stopped?): {first}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C (or SIGTERM, one process): one line (rank 0), no traceback
        what = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"
        if DistEnv.from_env().rank == 0:
            print(f"baichuan train: {what}; {_interrupted_line(cfg)}", file=sys.stderr, flush=True)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
