"""The DeepSpeed training loop: engine, schedule, data position, checkpoints, logging.

Entry points:

* :func:`run_training(cfg)` runs one rank. Under a launcher (``deepspeed``, ``torchrun``) it reads
  ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` once, here; without one it is a world of one process.
* ``python -m baichuan.train --config run.json`` is what :func:`baichuan.launch.launch` starts on
  each rank through the ``deepspeed`` launcher (``baichuan train --num-procs N``).

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
import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baichuan.errors import BaichuanError
from baichuan.train_config import TrainConfig, build_deepspeed_config, precision_of


class TrainingError(BaichuanError, RuntimeError):
    """The run cannot continue (bad input, diverged loss, inconsistent checkpoint)."""


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
    return Path(cfg.output_dir) / "checkpoints"


def step_tag(step: int) -> str:
    return f"step-{step}"


def latest_tag(ckpt_dir: Path) -> str | None:
    p = ckpt_dir / "latest"
    if not p.is_file():
        return None
    tag = p.read_text(encoding="utf-8").strip()
    if not tag or "/" in tag or tag.startswith("."):
        raise TrainingError(f"{p}: does not name a checkpoint ({tag!r})")
    if not (ckpt_dir / tag).is_dir():
        raise TrainingError(f"{p} names {tag}, but {ckpt_dir / tag} does not exist")
    return tag


def latest_model_dir(output_dir: str | os.PathLike[str]) -> Path:
    """The native model folder of a run's newest complete checkpoint (for generate/export-hf)."""
    ckpt = Path(output_dir) / "checkpoints"
    tag = latest_tag(ckpt)
    if tag is None:
        raise TrainingError(f"{output_dir}: no checkpoint yet ({ckpt / 'latest'} is missing)")
    model = ckpt / tag / "model"
    if not (model / "config.json").is_file():
        raise TrainingError(f"{ckpt / tag}: the native model folder is missing")
    return model


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prune_checkpoints(ckpt_dir: Path, keep_last: int, protect: str) -> list[str]:
    """Delete ``step-N`` folders beyond the newest ``keep_last`` (never ``protect``)."""
    tags = []
    for p in ckpt_dir.glob("step-*"):
        try:
            tags.append((int(p.name.split("-", 1)[1]), p.name))
        except ValueError:
            continue
    tags.sort()
    removed = []
    for _, name in tags[: max(0, len(tags) - keep_last)]:
        if name != protect:
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)
            removed.append(name)
    return removed


# ----------------------------------------------------------------------------------- the run
def _model_config(cfg: TrainConfig, vocab_hint: int | None, saved: dict[str, Any] | None):
    from baichuan.config import ModelConfig, scaled_for_training

    if saved is not None:  # resuming: the checkpoint's architecture wins
        mc = ModelConfig.from_dict(saved)
    elif cfg.init_from:
        from baichuan.hf import checkpoint_config

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
    ckpt = checkpoint_dir(cfg)
    if cfg.resume and ((ckpt / "latest").exists() or any(ckpt.glob("step-*"))):  # checked when chosen (faults)
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
        from baichuan.launch import free_port

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


def _run(cfg: TrainConfig, env: DistEnv) -> TrainResult:
    import torch

    from baichuan import data as data_mod
    from baichuan import mixture

    for spec in mixture.parse_sources(cfg.data, "--data"):
        if not Path(spec.path).exists():
            raise data_mod.DataError(f"training data not found: {spec.path}")
    run_dir = Path(cfg.output_dir)
    ckpt_dir = checkpoint_dir(cfg)
    # Every rank checks the run directory before any rank writes (rank 0 applies it after the
    # rendezvous below): a previous run is refused without resume/overwrite (baichuan.safety).
    run_plan = _plan_run_dir(cfg)

    # What was recorded when the run started (resume) wins over the command line for the model.
    run_json = run_dir / "run.json"
    record: dict[str, Any] | None = None
    tag = None
    if cfg.resume:
        tag = _resume_tag(cfg, ckpt_dir, env)
        if tag is None and env.rank == 0:
            print(f"--resume: no checkpoint in {ckpt_dir} yet; starting at step 0", file=sys.stderr, flush=True)
        if tag is not None:
            if not run_json.is_file():
                raise TrainingError(f"cannot resume: {run_json} is missing")
            record = json.loads(run_json.read_text(encoding="utf-8"))

    vocab_hint, data_sha = _tokenizer_vocab(cfg)
    expected_sha = record.get("tokenizer_sha256") if record else None
    expected_from = f"recorded in {run_json}" if expected_sha else ""
    if cfg.init_from:
        from baichuan.hf import find_tokenizer

        init_tok = find_tokenizer(cfg.init_from)
        if init_tok is not None and not expected_sha:
            expected_sha, expected_from = data_mod.file_sha256(init_tok), str(init_tok)
    if cfg.tokenizer and not expected_sha:
        expected_sha, expected_from = data_sha, f"--tokenizer {cfg.tokenizer}"
    if cfg.tokenizer and expected_sha and data_sha != expected_sha:
        raise data_mod.DataError(
            f"--tokenizer {cfg.tokenizer} is not the model's tokenizer ({expected_from}); sha256 differs"
        )

    mcfg = _model_config(cfg, vocab_hint, record.get("model_config") if record else None)
    if cfg.attn_backend is not None:
        mcfg.attn_backend = cfg.attn_backend
    mcfg.gradient_checkpointing = cfg.activation_checkpointing

    cuda = torch.cuda.is_available()
    ds_config = build_deepspeed_config(cfg, cpu=not cuda)
    micro_batch = int(ds_config["train_micro_batch_size_per_gpu"])
    grad_accum = int(ds_config.get("gradient_accumulation_steps", 1))
    zero_stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))

    # Data first: bad input fails before DeepSpeed starts and the model is built.
    rank_state: dict[str, Any] | None = None
    if tag is not None:
        first_state = ckpt_dir / tag / "trainer_state_rank00000.json"
        saved_world = env.world_size
        if first_state.is_file():
            saved_world = int(json.loads(first_state.read_text(encoding="utf-8")).get("world_size", env.world_size))
        if saved_world != env.world_size and zero_stage > 0:
            raise TrainingError(
                f"cannot resume {ckpt_dir / tag} with {env.world_size} rank(s): it was saved by {saved_world} ranks with "
                f"ZeRO-{zero_stage}, whose optimizer state DeepSpeed cannot re-partition; resume with {saved_world} ranks "
                "(a mixture's data position itself carries over to any number of ranks; docs/training.md)"
            )
        # Another number of ranks (ZeRO-0): rank 0's data position is the global one (shards, mixtures).
        state_rank = env.rank if saved_world == env.world_size else 0
        state_file = ckpt_dir / tag / f"trainer_state_rank{state_rank:05d}.json"
        if not state_file.is_file():
            raise TrainingError(f"cannot resume from {ckpt_dir / tag}: {state_file.name} is missing (incomplete checkpoint?)")
        rank_state = json.loads(state_file.read_text(encoding="utf-8"))
    source = mixture.open_training_data(
        cfg.data,
        seq_len=cfg.max_length + 1,
        micro_batch=micro_batch,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.seed,
        vocab_size=mcfg.vocab_size,
        tokenizer_path=cfg.tokenizer,
        expected_tokenizer_sha256=expected_sha,
        expected_from=expected_from,
        state=rank_state["data"] if rank_state else None,
        encode_threads=cfg.encode_threads,
    )
    tokenizer_sha = expected_sha or data_sha
    if isinstance(source, data_mod.ShardSource):
        tokenizer_sha = source.manifest.tokenizer_sha256
    elif isinstance(source, mixture.MixtureSource):
        tokenizer_sha = source.readers[0].manifest.tokenizer_sha256
    eval_set = None
    if cfg.eval_data is not None:
        eval_set = mixture.open_eval(
            cfg.eval_data, seq_len=cfg.max_length + 1, eval_tokens=cfg.eval_tokens, vocab_size=mcfg.vocab_size,
            expected_tokenizer_sha256=tokenizer_sha, expected_from=expected_from or "the training data",
        )
        if env.rank == 0:
            for line in mixture.eval_overlap_warnings(cfg.data, cfg.eval_data):
                print(line, file=sys.stderr, flush=True)

    init_state = _init_state(cfg.init_from, mcfg, zero_stage) if cfg.init_from and tag is None else None

    from baichuan.launch import announce_extension_build, use_environment_extensions_dir

    use_environment_extensions_dir()
    import deepspeed

    if cuda:
        torch.cuda.set_device(env.local_rank)
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    if not cuda and env.rank == 0:
        announce_extension_build()
    from datetime import timedelta

    deepspeed.init_distributed(dist_backend=cfg.dist_backend or ("nccl" if cuda else "gloo"),
                               timeout=timedelta(seconds=cfg.collective_timeout))  # --collective-timeout
    import torch.distributed as dist

    is_main = env.rank == 0
    dist.barrier()  # every rank has checked the run directory above
    if is_main:
        _apply_run_plan(run_plan)
        run_dir.mkdir(parents=True, exist_ok=True)
        if record is None:
            record = {
                "train_config": cfg.to_dict(),
                "model_config": mcfg.to_dict(),
                "tokenizer_sha256": tokenizer_sha,
                "deepspeed_config": ds_config,
                "world_size": env.world_size,
            }
            _write_atomic(run_json, json.dumps(record, indent=2, sort_keys=True) + "\n")

    from baichuan.model import BaichuanForCausalLM, flops_per_token

    torch.manual_seed(cfg.seed)
    if zero_stage == 3:
        model = _build_zero3_model(mcfg, ds_config, is_main)
    else:
        model = BaichuanForCausalLM(mcfg)
    if init_state is not None:
        from baichuan.checkpoint import check_state_dict

        model.load_state_dict(check_state_dict(model, init_state, str(cfg.init_from)), strict=True)
        del init_state

    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )

    if cfg.compile:
        engine.compile()
    start_step = 0
    nonfinite_total = 0
    tokens_seen = 0
    if tag is not None:
        load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        if load_path is None:
            raise TrainingError(f"DeepSpeed could not load the checkpoint {ckpt_dir / tag}")
        assert rank_state is not None
        start_step = int(rank_state["step"])
        nonfinite_total = int(rank_state.get("nonfinite_total", 0))
        tokens_seen = int(rank_state.get("tokens_seen", 0))
        _load_rng(ckpt_dir / tag / f"rng_state_rank{env.rank:05d}.safetensors")
        if engine.global_steps != start_step:
            raise TrainingError(f"{ckpt_dir / tag}: DeepSpeed is at step {engine.global_steps}, trainer state at {start_step}")

    log = _Logger(cfg, run_dir, is_main, start_step)
    flops_tok = flops_per_token(mcfg, cfg.max_length)
    tokens_per_step = env.world_size * micro_batch * grad_accum * cfg.max_length
    if is_main:
        log.info(
            f"model {cfg.model} {sum(getattr(p, 'ds_numel', p.numel()) for p in model.parameters()) / 1e6:.1f}M params "
            f"(layers={mcfg.num_hidden_layers} hidden={mcfg.hidden_size} vocab={mcfg.vocab_size}); "
            f"{env.world_size} rank(s) on {device.type}, ZeRO-{zero_stage}, {precision_of(ds_config)}, "
            f"micro-batch {micro_batch} x accumulation {grad_accum} x seq {cfg.max_length}; data: {source.describe()}"
            + (f"; resumed from {ckpt_dir / tag} at step {start_step}" if tag else "")
        )
        if not cfg.save_every:
            log.info("save_every is 0: no checkpoint will be written")
        if eval_set is not None:
            log.info(f"validation every {cfg.eval_every} steps: {eval_set.describe()}")
            for name, wanted, have in eval_set.short:
                log.info(f"--eval-data {name}: only {have} sequences (of {wanted} wanted); all of them are evaluated")

    result = TrainResult(steps=start_step, nonfinite_skipped=nonfinite_total)
    last_saved = start_step if tag is not None else -1

    from baichuan import faults
    from baichuan.checkpoint import write_manifest

    fault = faults.DebugFault(cfg.debug_fault, env.rank, cfg.attempt)
    watchdog = faults.Watchdog(run_dir, env.rank, cfg.attempt, cfg.hang_timeout).start()

    def save(step: int) -> None:
        with watchdog.paused():  # a save may take minutes; the collective timeout still applies
            try:
                _save(step)
            except OSError as e:  # disk full, I/O error: `latest` still names the previous checkpoint
                prev = latest_tag(ckpt_dir) if (ckpt_dir / "latest").is_file() else None
                raise TrainingError(
                    f"checkpoint {ckpt_dir / step_tag(step)} could not be written on rank {env.rank} "
                    f"({e.strerror or e}{': ' + str(e.filename) if e.filename else ''}); "
                    + (f"{ckpt_dir / 'latest'} still names the previous complete checkpoint {ckpt_dir / prev}"
                       if prev else "no complete checkpoint was written before")
                ) from None
            dist.barrier()  # every rank waits for rank 0's manifest and `latest`

    def _save(step: int) -> None:
        nonlocal last_saved
        t = step_tag(step)
        tag_dir = ckpt_dir / t
        if is_main and tag_dir.is_dir() and (not (ckpt_dir / "latest").is_file() or latest_tag(ckpt_dir) != t):
            shutil.rmtree(tag_dir)  # left by a save that did not complete (a failure, then a restart)
        dist.barrier()
        tag_dir.mkdir(parents=True, exist_ok=True)
        fault.at_save(step, tag_dir)
        state = {
            "step": step,
            "data": source.state_dict(),
            "nonfinite_total": nonfinite_total,
            "tokens_seen": tokens_seen,
            "rank": env.rank,
            "world_size": env.world_size,
        }
        _write_atomic(tag_dir / f"trainer_state_rank{env.rank:05d}.json", json.dumps(state) + "\n")
        _save_rng(tag_dir / f"rng_state_rank{env.rank:05d}.safetensors")
        engine.save_checkpoint(
            str(ckpt_dir), tag=t, client_state={"train_config": cfg.to_dict()}, save_latest=False
        )
        _save_native(engine, zero_stage, tag_dir / "model", is_main, cfg.tokenizer)
        if is_main:  # beside the DeepSpeed files too, where `baichuan export-hf CHECKPOINTS_DIR` looks
            mcfg.to_json_file(tag_dir / "config.json")
        dist.barrier()
        if is_main:
            write_manifest(tag_dir)  # verified before --resume lets DeepSpeed unpickle these files
            _write_atomic(ckpt_dir / "latest", t + "\n")
            removed = prune_checkpoints(ckpt_dir, cfg.keep_last, protect=t)
            log.info(f"checkpoint saved: {tag_dir}" + (f" (removed {', '.join(removed)})" if removed else ""))
        result.last_checkpoint = str(tag_dir)
        last_saved = step

    step = start_step
    in_row = 0
    micro = 0
    acc_loss = 0.0
    acc_n = 0
    fingerprint = 0
    t_last = time.perf_counter()
    vocab = mcfg.vocab_size
    restart_pending = cfg.restart if is_main else None
    data_name = mixture.first_path(cfg.data)
    last_epochs: dict[str, int] = source.epochs_by_source() if isinstance(source, mixture.MixtureSource) else {}
    engine.train()
    try:
        while step < cfg.steps:
            fault.at_step_start(step + 1)
            batch = source.next_batch()
            top = int(batch.max())
            if top >= vocab:
                where = cfg.data
                if isinstance(source, mixture.MixtureSource):  # name the source of the offending row
                    where = source.names[source.last_sources[int(batch.max(axis=1).argmax())]]
                raise data_mod.DataError(f"{where}: token id {top} is outside the model's vocabulary ({vocab})")
            fingerprint = zlib.crc32(batch.tobytes(), fingerprint)
            x = torch.from_numpy(batch)
            x = x.pin_memory().to(device, non_blocking=True) if cuda else x
            micro += 1
            loss = engine(x[:, :-1], labels=x, ce_chunk=cfg.chunked_ce).loss  # model.py docstring, Labels
            if micro in cfg.inject_nonfinite:
                loss = loss * float("nan")
            ok = torch.isfinite(loss.detach()).to(torch.float32)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if ok.item() < 1.0:
                in_row += 1
                nonfinite_total += 1
                log.info(f"step {step + 1}: non-finite loss, micro-batch skipped ({in_row} in a row, {nonfinite_total} in all)")
                if in_row >= cfg.max_nonfinite_in_row:
                    raise TrainingError(
                        f"loss was NaN/inf for {in_row} micro-batches in a row (limit max_nonfinite_in_row="
                        f"{cfg.max_nonfinite_in_row}); stopping. Lower the learning rate or check the data, then "
                        "resume from the last checkpoint"
                    )
                del loss
                continue
            in_row = 0
            engine.backward(loss)
            lr = float(engine.get_lr()[0])
            engine.step()
            acc_loss += float(loss.detach().float().item())
            acc_n += 1
            if engine.global_steps == step:
                continue  # inside gradient accumulation
            step = engine.global_steps
            tokens_seen += tokens_per_step
            now = time.perf_counter()
            dt = now - t_last
            # On the rank's device: NCCL has no CPU tensors (gloo takes either).
            stats = torch.tensor([acc_loss / max(acc_n, 1), float(fingerprint)], dtype=torch.float64, device=device)
            gathered = [torch.zeros_like(stats) for _ in range(env.world_size)]
            dist.all_gather(gathered, stats)
            gathered = [g.cpu() for g in gathered]
            rank_losses = [float(g[0]) for g in gathered]
            mean_loss = sum(rank_losses) / len(rank_losses)
            gn = engine.get_global_grad_norm()
            grad_norm = float(gn) if gn is not None else float("nan")
            tps = tokens_per_step / dt if dt > 0 else 0.0
            tflops = flops_tok * tps / env.world_size / 1e12
            record_line = {
                "step": step,
                "loss": mean_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tps,
                "tflops_per_device": tflops,
                "mfu": tflops / cfg.peak_tflops,
                "step_time_s": dt,
                "tokens_seen": tokens_seen,
                "nonfinite_skipped": nonfinite_total,
                "rank_losses": rank_losses,
                "rank_data_crc32": [int(g[1]) for g in gathered],
            }
            if isinstance(source, mixture.MixtureSource):
                record_line["tokens_by_source"] = source.tokens_by_source()
                epochs = source.epochs_by_source()
                record_line["epochs_by_source"] = epochs
                for name, e in epochs.items():
                    if e > last_epochs.get(name, e):
                        log.info(f"data: {name} exhausted; starting its epoch {e + 1} in a new order (epoch {e} done)")
                last_epochs = epochs
            else:
                record_line["tokens_by_source"] = {data_name: tokens_seen}
            if eval_set is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                from baichuan.validation import evaluate

                record_line.update(evaluate(engine, eval_set, rank=env.rank, world_size=env.world_size,
                                            micro_batch=micro_batch, device=device, ce_chunk=cfg.chunked_ce))
            result.losses[step] = mean_loss
            result.steps = step
            result.nonfinite_skipped = nonfinite_total
            log.step(record_line)
            acc_loss, acc_n, fingerprint = 0.0, 0, 0
            if restart_pending:
                rec = faults.log_recovered(run_dir, restart_pending, step)
                log.info(f"restart {rec['restart']}: first new step {step}, {rec['seconds_to_first_step']:.1f} s "
                         "after the failure was detected")
                restart_pending = None
            if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
                save(step)
            watchdog.step_done(step, dt)
            t_last = time.perf_counter()
        if cfg.save_every and last_saved != step:
            save(step)
    finally:
        watchdog.stop()
        source.close()
        if eval_set is not None:
            eval_set.close()
        log.close()
    if is_main and cfg.plot:
        png = plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
        if png:
            log.info(f"loss curve: {png}")
    return result


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
    from baichuan.hf import load_checkpoint

    return load_checkpoint(init_from, config=mcfg)[1]


def _resume_tag(cfg: TrainConfig, ckpt_dir: Path, env: DistEnv) -> str | None:
    """The checkpoint --resume loads. Our launcher verified it already (``cfg.resume_tag``); a
    one-process run verifies here, falling back to the previous complete checkpoint with a warning
    (``baichuan.faults.choose_checkpoint``); ranks of another launcher check ``latest`` on local
    rank 0 (before DeepSpeed's start-up collectives, which the others wait in) and refuse a damaged one."""
    if cfg.resume_tag:
        if not (ckpt_dir / cfg.resume_tag).is_dir():
            raise TrainingError(f"cannot resume: {ckpt_dir / cfg.resume_tag} is missing")
        return cfg.resume_tag
    if env.world_size == 1:
        from baichuan.faults import choose_checkpoint

        return choose_checkpoint(ckpt_dir, lambda line: print(line, file=sys.stderr, flush=True))
    tag = latest_tag(ckpt_dir)
    if tag is not None and env.local_rank == 0:
        from baichuan.checkpoint import verify_manifest

        verify_manifest(ckpt_dir / tag)
    return tag


def _save_rng(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(path))


def _load_rng(path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainingError(f"cannot resume: {path} is missing")
    t = load_file(str(path))
    torch.set_rng_state(t["torch_cpu"])
    if "torch_cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["torch_cuda"])


def _save_native(engine: Any, zero_stage: int, out: Path, is_main: bool, tokenizer: str | None) -> None:
    """The native model folder (rank 0), gathering ZeRO-3 partitions first."""
    from baichuan.checkpoint import save_model

    module = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if is_main:
                save_model(module, out)
    elif is_main:
        save_model(module, out)
    if is_main and tokenizer:
        shutil.copyfile(tokenizer, out / "tokenizer.model")


class _Logger:
    """Rank-0 output: a tqdm progress bar, log lines, metrics.jsonl and TensorBoard."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, is_main: bool, start_step: int) -> None:
        self.cfg, self.is_main = cfg, is_main
        self.bar = None
        self.writer = None
        self.metrics = None
        if not is_main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        kept = []
        if path.is_file():  # drop lines beyond the resumed step (written after the checkpoint)
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= start_step:
                        kept.append(line)
                except (ValueError, KeyError):
                    continue
        _write_atomic(path, "".join(x + "\n" for x in kept))
        self.metrics = open(path, "a", encoding="utf-8")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard" / "train"), purge_step=start_step + 1)
            except ImportError:
                self.info("tensorboard is not installed; TensorBoard logging is off")
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def info(self, msg: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def step(self, r: dict[str, Any]) -> None:
        if not self.is_main:
            return
        assert self.metrics is not None
        self.metrics.write(json.dumps(r) + "\n")
        self.metrics.flush()
        s = r["step"]
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu"):
                v = r[key]
                if isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(f"train/{key}", v, s)
            for name, n in r.get("tokens_by_source", {}).items():
                self.writer.add_scalar(f"data/tokens/{name}", n, s)
            for key, v in r.items():  # val_loss, val_loss/<source>
                if key.startswith("val_loss") and math.isfinite(v):
                    self.writer.add_scalar(key.replace("val_loss", "val/loss", 1), v, s)
                    self.writer.add_scalar(key.replace("val_loss", "val/ppl", 1), _ppl(v), s)
        if self.bar is not None:
            self.bar.update(s - self.bar.n)
            self.bar.set_postfix(
                loss=f"{r['loss']:.4f}", lr=f"{r['lr']:.2e}", tok_s=f"{r['tokens_per_s']:.0f}", mfu=f"{r['mfu']:.1%}",
                refresh=False,
            )
        if s % self.cfg.log_every == 0 or s == self.cfg.steps:
            self.info(
                f"step {s}/{self.cfg.steps} loss {r['loss']:.4f} lr {r['lr']:.3e} grad_norm {r['grad_norm']:.3f} "
                f"tokens/s {r['tokens_per_s']:.0f} TFLOPS {r['tflops_per_device']:.2f} MFU {r['mfu']:.2%}"
            )
        if "val_loss" in r:
            per_source = [(k.split("/", 1)[1], v) for k, v in r.items() if k.startswith("val_loss/")]
            self.info(
                f"step {s}/{self.cfg.steps} validation loss {r['val_loss']:.4f} ppl {_ppl(r['val_loss']):.2f}"
                + ("".join(f"; {name}: loss {v:.4f} ppl {_ppl(v):.2f}" for name, v in per_source))
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def plot_loss_curve(metrics: Path, out: Path) -> Path | None:
    """Training loss against step from ``metrics.jsonl``, with the validation curves (``val_loss``,
    ``val_loss/<source>``) in the same PNG (None when there is nothing to plot)."""
    steps, losses = [], []
    val: dict[str, tuple[list[int], list[float]]] = {}
    if not metrics.is_file():
        return None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]):
            steps.append(r["step"])
            losses.append(r["loss"])
        for key, v in r.items():
            if key.startswith("val_loss") and isinstance(v, (int, float)) and math.isfinite(v):
                xs, ys = val.setdefault(key, ([], []))
                xs.append(r["step"])
                ys.append(v)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=1.2, label="train")
    for key, (xs, ys) in sorted(val.items()):
        label = "validation" if key == "val_loss" else f"validation {key.split('/', 1)[1]}"
        ax.plot(xs, ys, marker="o", ms=3, lw=1.6 if key == "val_loss" else 0.9,
                ls="-" if key == "val_loss" else "--", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{metrics.parent.name}: training" + (" and validation" if val else "") + " loss")
    if val:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


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
