"""Checkpoint cost: what `baichuan train` writes per checkpoint, how big it is and how long it takes.

One process (a world of one), DeepSpeed ZeRO-2 as in training, one optimizer step taken first (so
the Adam states exist), then per repeat the three parts of ``baichuan.train``'s save, timed apart:

1. ``engine.save_checkpoint`` (DeepSpeed: module states + optimizer partition + scheduler),
2. the native ``model/`` folder (``baichuan.checkpoint.save_model``: safetensors),
3. ``files.sha256.json`` (``write_manifest``: size + sha256 of every file, 4 threads),

and the time ``choose_checkpoint``/``verify_manifest`` takes to check it before a resume.

    python scripts/bench_checkpoint.py                       # tiny model, CPU
    python scripts/bench_checkpoint.py --model 7b --layers 8 --precision bf16 --out /path/on/the/target/fs
    python scripts/bench_checkpoint.py --writer python       # DeepSpeed's checkpoint "writer" engines
    python scripts/bench_checkpoint.py --writer fast         # (fast needs the async_io op: libaio)

Prints one line per repeat and a summary (median).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--layers", type=int, default=None, help="num_hidden_layers override (8: the 7B slice)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder to write into (default: a temporary folder)")
    ap.add_argument("--writer", default="torch", choices=("torch", "python", "fast", "decoupled"),
                    help="DeepSpeed checkpoint engine: torch.save (default) or the 'checkpoint.writer' engines")
    args = ap.parse_args(argv)

    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                 ("LOCAL_SIZE", "1"), ("CROSS_RANK", "0"), ("CROSS_SIZE", "1")):  # the last three: DeepSpeed writers
        os.environ.setdefault(k, v)
    from baichuan.launch import free_port, use_environment_extensions_dir

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    use_environment_extensions_dir()
    import deepspeed
    import torch

    from baichuan.checkpoint import save_model, verify_manifest, write_manifest
    from baichuan.config import ModelConfig
    from baichuan.model import BaichuanForCausalLM
    from baichuan.train_config import TrainConfig, build_deepspeed_config

    cuda = torch.cuda.is_available()
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    mcfg = ModelConfig.preset(args.model, **overrides)
    cfg = TrainConfig(data="-", output_dir="-", model=args.model, max_length=args.seq, steps=10, lr=1e-4,
                      precision=args.precision, micro_batch_size=1, tensorboard=False)
    ds = build_deepspeed_config(cfg, cpu=not cuda)
    if args.writer != "torch":
        ds["checkpoint"] = {"writer": {"type": "fast" if args.writer == "decoupled" else args.writer,
                                       "decoupled": args.writer == "decoupled"}}
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(0)
    torch.manual_seed(0)
    model = BaichuanForCausalLM(mcfg)
    try:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=ds)
    except Exception as e:  # noqa: BLE001 - an engine this machine cannot build
        print(f"writer {args.writer}: unavailable here ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return 1
    x = torch.randint(0, mcfg.vocab_size, (1, args.seq + 1), device=device)
    loss = engine(x[:, :-1], labels=x).loss
    engine.backward(loss)
    engine.step()
    n_params = sum(p.numel() for p in model.parameters())

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for i in range(args.repeats):
            tag = f"step-{i + 1}"
            d = root / tag
            t0 = time.perf_counter()
            engine.save_checkpoint(str(root), tag=tag, save_latest=False)
            if hasattr(engine, "checkpoint_engine") and hasattr(engine.checkpoint_engine, "wait"):
                engine.checkpoint_engine.wait()  # an async (decoupled) writer: the files must be complete
            t1 = time.perf_counter()
            save_model(engine.module, d / "model")
            t2 = time.perf_counter()
            write_manifest(d)
            t3 = time.perf_counter()
            verify_manifest(d)
            t4 = time.perf_counter()
            ds_bytes = folder_bytes(d) - folder_bytes(d / "model") - (d / "files.sha256.json").stat().st_size
            row = dict(deepspeed_s=t1 - t0, model_s=t2 - t1, manifest_s=t3 - t2, verify_s=t4 - t3,
                       total_s=t3 - t0, ds_mb=ds_bytes / 1e6, model_mb=folder_bytes(d / "model") / 1e6,
                       total_mb=folder_bytes(d) / 1e6)
            rows.append(row)
            print(f"repeat {i + 1}: save {row['total_s']:.2f} s (DeepSpeed {row['deepspeed_s']:.2f} s, model/ "
                  f"{row['model_s']:.2f} s, sha256 manifest {row['manifest_s']:.2f} s); verify {row['verify_s']:.2f} s; "
                  f"{row['total_mb']:.1f} MB (DeepSpeed {row['ds_mb']:.1f} MB, model/ {row['model_mb']:.1f} MB)",
                  flush=True)
            shutil.rmtree(d)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{args.model}{f' {args.layers} layers' if args.layers else ''} ({n_params / 1e6:.1f}M params, "
          f"{args.precision}, ZeRO-2, 1 rank, {'cuda' if cuda else 'cpu'}, writer {args.writer}): median save "
          f"{med['total_s']:.2f} s = DeepSpeed {med['deepspeed_s']:.2f} + model/ {med['model_s']:.2f} + manifest "
          f"{med['manifest_s']:.2f}; verify {med['verify_s']:.2f} s; size {med['total_mb']:.1f} MB "
          f"(DeepSpeed {med['ds_mb']:.1f}, model/ {med['model_mb']:.1f}) in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
