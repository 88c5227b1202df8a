#!/usr/bin/env python3
"""Training throughput under DeepSpeed: one short, self-contained GPU job.

An 8-layer slice of Baichuan-7B's shapes (hidden 4096, ffn 11008, 32 heads, vocab 64000; 2.14B
parameters), sequence 4096, micro-batch 2, bf16, DeepSpeed ZeRO-2 on one GPU (torch fused AdamW,
so nothing is compiled with nvcc), random token ids. For each attention backend and each loss path
it prints tokens/s, TFLOPS and MFU against 989.4 TFLOP/s (H100/H200 dense bf16), with

    MFU = (6 * N_nonembed + 12 * layers * hidden * seq) * tokens/s / peak

(``baichuan.model.flops_per_token``; the formula of ../shared/gpu/README.md, whose H200 anchors
are: HF Llama + SDPA plain loop 42.6%, DeepSpeed ZeRO-2 + xformers 34.9%, DeepSpeed + SDPA 36.3%).

Each micro-batch runs ``baichuan.train.Trainer.train_step`` (the step of ``baichuan train``: the
loss inside the model, the all-ranks non-finite check, backward, optimizer step) on the engine built
here. Loss paths: ``chunked`` is the model's chunked LM-head loss, ``model(x[:, :-1], labels=x,
ce_chunk=N)`` (what ``baichuan train`` uses; no fp32 logits for all 64000 classes), ``plain`` is
``ce_chunk=0``: bf16 logits + fp32 ``F.cross_entropy``.

``--engines deepspeed,plain`` adds rows without DeepSpeed (fp32 weights, bf16 autocast, torch fused
AdamW, plain loss: the recipe of the anchors' "plain loop"), separating DeepSpeed's overhead from the
model's kernels.

``--data single|mixture`` reads the batches from token shards instead of random ids: ``single`` one
shard directory (``baichuan.data.ShardSource``), ``mixture`` three with weights 0.7/0.2/0.1
(``baichuan.mixture.MixtureSource``), synthetic shards written to a temporary folder first. The
table then gives the data time per step (reading the micro-batch and moving it to the device,
median inside the timed loop) and the same for 500 batches read alone (``data-only``).

Each configuration runs in its own child process (clean GPU memory, fresh DeepSpeed state)::

    python scripts/bench_train.py                       # GPU: all backends x {chunked, plain}
    python scripts/bench_train.py --backends sdpa --loss chunked --steps 20
    python scripts/bench_train.py --cpu-smoke           # tiny config on the CPU, checks the script runs
    python scripts/bench_train.py --cpu-smoke --backends sdpa --loss chunked --data single,mixture

On a GPU machine without internet, install the wheels prepared by ../shared/gpu/prepare-wheels.sh
first (deepspeed, xformers); the script needs only torch, deepspeed and this package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from baichuan.units import H100_BF16_PEAK_TFLOPS

PEAK = H100_BF16_PEAK_TFLOPS * 1e12


class _PlainEngine:
    """The engine calls the benchmark makes, without DeepSpeed (for comparison with the anchors)."""

    def __init__(self, model, opt_params: dict, bf16: bool, cuda: bool, compile_model: bool) -> None:
        import torch

        self.module = model
        self._call = torch.compile(model) if compile_model else model
        params = {k: v for k, v in opt_params.items() if k != "torch_adam"}
        self.opt = torch.optim.AdamW(model.parameters(), **params)
        self.autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=bf16)

    def __call__(self, *args, **kwargs):
        with self.autocast:
            return self._call(*args, **kwargs)

    def backward(self, loss) -> None:
        loss.backward()

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.opt.param_groups]

    def step(self) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


MIXTURE = ("0.7", "0.2", "0.1")


def write_synthetic_shards(root: str, vocab: int, tokens: int) -> list[str]:
    """Three shard directories in the documented format (docs/formats.md), random documents."""
    import hashlib

    import numpy as np

    tok = os.path.join(root, "tokenizer.model")
    with open(tok, "wb") as f:
        f.write(b"bench_train.py synthetic tokenizer (hashed only)")
    sha = hashlib.sha256(open(tok, "rb").read()).hexdigest()
    dtype = "uint16" if vocab <= 1 << 16 else "uint32"
    dirs = []
    for i in range(len(MIXTURE)):
        d = os.path.join(root, f"source{i}")
        os.makedirs(d)
        rng = np.random.default_rng(i)
        data = rng.integers(3, vocab, tokens).astype(dtype)
        ends = np.sort(rng.choice(np.arange(1, tokens), tokens // 500, replace=False))
        data[ends - 1] = 2  # documents of ~500 tokens ending with EOS
        offsets = np.concatenate([[0], ends, [tokens]]).astype("<u8")
        data.astype(np.dtype(dtype).newbyteorder("<")).tofile(os.path.join(d, "shard-00000.bin"))
        offsets.tofile(os.path.join(d, "shard-00000.idx"))
        manifest = {
            "format": "baichuan-shards", "version": 1, "dtype": dtype,
            "tokenizer": {"sha256": sha, "vocab_size": vocab, "eos_id": 2},
            "shards": [{"bin": "shard-00000.bin", "idx": "shard-00000.idx", "documents": len(offsets) - 1, "tokens": tokens}],
        }
        with open(os.path.join(d, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f)
        dirs.append(d)
    return dirs


def open_data(args: argparse.Namespace, vocab: int):
    """The batch source of --data single|mixture (None for random ids)."""
    if args.data == "random":
        return None
    from baichuan.mixture import open_training_data

    dirs = args.data_dirs.split(",")
    spec = dirs[0] if args.data == "single" else [f"{w}:{d}" for w, d in zip(MIXTURE, dirs)]
    return open_training_data(spec, seq_len=args.seq + 1, micro_batch=args.micro_batch, rank=0, world_size=1,
                              seed=1234, vocab_size=vocab)


def child(args: argparse.Namespace) -> dict:
    import torch

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed

    from baichuan.config import ModelConfig
    from baichuan.model import BaichuanForCausalLM, flops_per_token

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if args.cpu_smoke:
        mcfg = ModelConfig.preset("tiny", vocab_size=1000, attn_backend=args.backend)
    else:
        mcfg = ModelConfig(num_hidden_layers=args.layers, attn_backend=args.backend)
    mcfg.gradient_checkpointing = args.activation_checkpointing
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: 2.14B parameters take a while on a CPU
        model = BaichuanForCausalLM(mcfg)
    bf16 = cuda or args.cpu_bf16
    opt_params = {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "torch_adam": True}
    if cuda:
        opt_params["fused"] = True  # torch's fused AdamW: no nvcc build, one kernel per step
    ds = {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_allow_untested_optimizer": True,
        "optimizer": {"type": "AdamW", "params": opt_params},
        "zero_optimization": {"stage": args.zero, "contiguous_gradients": True, "overlap_comm": True,
                              "reduce_scatter": True, "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
    }
    if args.engine == "deepspeed":
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
        if args.compile:
            engine.compile()
    else:  # the anchors' "plain loop": fp32 weights, bf16 autocast, torch fused AdamW, no DeepSpeed
        engine = _PlainEngine(model, opt_params, bf16, cuda, args.compile)
    seq = args.seq
    g = torch.Generator(device="cpu").manual_seed(0)
    batches = [torch.randint(0, mcfg.vocab_size, (args.micro_batch, seq + 1), generator=g) for _ in range(4)]
    source = open_data(args, mcfg.vocab_size)
    chunk = args.chunk if args.loss == "chunked" else 0
    from baichuan.train import Trainer

    trainer = Trainer.for_engine(engine, device, ce_chunk=chunk)  # the training step of `baichuan train`
    times, losses, data_times = [], [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        td = time.perf_counter()
        if source is not None:  # what `baichuan train` does per micro-batch
            b = torch.from_numpy(source.next_batch())
            x = b.pin_memory().to(device, non_blocking=True) if cuda else b
        else:
            x = batches[i % len(batches)].to(device, non_blocking=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            data_times.append(time.perf_counter() - td)
        t0 = time.perf_counter()
        loss = trainer.train_step(x)  # forward with the loss inside, non-finite check, backward, step
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(float("nan") if loss is None else loss)
        if i >= args.warmup:
            times.append(dt)
    step = statistics.median(times)
    data_only = None
    if source is not None:  # the reader alone, long enough to be stable
        t0 = time.perf_counter()
        for _ in range(500):
            source.next_batch()
        data_only = (time.perf_counter() - t0) / 500
        source.close()
    tps = args.micro_batch * seq / step
    tflops = flops_per_token(mcfg, seq) * tps / 1e12
    return {
        "engine": args.engine,
        "backend": engine.module.attn_backend_for(device),
        "loss_path": args.loss,
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "step_s": step,
        "tokens_per_s": tps,
        "tflops": tflops,
        "mfu": tflops * 1e12 / PEAK,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "data": args.data,
        "data_ms": statistics.median(data_times) * 1e3,
        "data_only_ms": data_only * 1e3 if data_only is not None else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=None, help="comma list of sdpa,xformers,eager [sdpa,xformers on GPU; sdpa,eager on CPU]")
    p.add_argument("--loss", default="chunked,plain", help="comma list of chunked,plain")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--engines", default="deepspeed", help="comma list of deepspeed,plain (plain: no DeepSpeed, bf16 autocast)")
    p.add_argument("--chunk", type=int, default=2048, help="rows per cross-entropy chunk")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="engine.compile() (torch.compile) before timing")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU: checks the script, times nothing useful")
    p.add_argument("--cpu-bf16", action="store_true", help="with --cpu-smoke: bf16 like the GPU run")
    p.add_argument("--data", default="random",
                   help="comma list of random,single,mixture: batches from random ids, one shard directory or a "
                        "0.7/0.2/0.1 mixture of three (synthetic shards) [random]")
    p.add_argument("--data-tokens", type=int, default=4_000_000, help="tokens per synthetic shard directory")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="deepspeed", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=29517, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data-dirs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cpu_smoke:
        args.seq = min(args.seq, 128)
        args.steps = min(args.steps, 3)
        args.warmup = min(args.warmup, 1)
        args.chunk = min(args.chunk, 64)

    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    if args.backends is None:
        try:
            import torch

            gpu = torch.cuda.is_available() and not args.cpu_smoke
        except ImportError:
            gpu = False
        args.backends = "sdpa,xformers" if gpu else "sdpa,eager"
    rows = []
    # The plain loop reproduces the anchors' recipe (bf16 autocast, plain loss) only.
    combos = [(e, b, l, d) for d in args.data.split(",") for e in args.engines.split(",") for b in args.backends.split(",")
              for l in args.loss.split(",") if e == "deepspeed" or l == "plain"]
    data_dirs = ""
    if any(d != "random" for d in args.data.split(",")):
        import tempfile

        tmp = tempfile.mkdtemp(prefix="bench_train_data_")
        vocab = 1000 if args.cpu_smoke else 64000
        data_dirs = ",".join(write_synthetic_shards(tmp, vocab, args.data_tokens))
    for i, (engine, backend, loss, data) in enumerate(combos):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--engine", engine, "--backend", backend,
               "--loss", loss, "--port", str(args.port + i), "--data", data]
        if data != "random":
            cmd += ["--data-dirs", data_dirs]
        for name in ("layers", "seq", "micro_batch", "steps", "warmup", "zero", "chunk"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        for flag in ("activation_checkpointing", "compile", "cpu_smoke", "cpu_bf16"):
            if getattr(args, flag):
                cmd.append(f"--{flag.replace('_', '-')}")
        print(f"== {engine} / {backend} / {loss} loss / {data} data", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        if r.returncode != 0 or line is None:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            rows.append({"engine": engine, "backend": backend, "loss_path": loss, "data": data, "error": " | ".join(tail)})
            continue
        rows.append(json.loads(line[len("RESULT "):]))
    if data_dirs:
        import shutil

        shutil.rmtree(os.path.dirname(data_dirs.split(",")[0]), ignore_errors=True)
    dev = next((r["device"] for r in rows if "device" in r), "?")
    shape = "tiny CPU smoke config" if args.cpu_smoke else f"{args.layers}-layer Baichuan-7B slice"
    print(f"\n{shape}, seq {args.seq}, micro-batch {args.micro_batch}, ZeRO-{args.zero} (deepspeed rows), "
          f"MFU against {PEAK / 1e12:.1f} TFLOP/s, device: {dev}")
    print(f"{'engine':<10} {'backend':<10} {'loss':<8} {'data':<8} {'tokens/s':>10} {'TFLOPS':>8} {'MFU':>7} {'step s':>8} "
          f"{'data ms':>8} {'data-only ms':>12} {'peak GiB':>9} {'loss0->N':>16}")
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<10} {r['backend']:<10} {r['loss_path']:<8} {r['data']:<8} failed: {r['error']}")
            continue
        only = f"{r['data_only_ms']:>12.3f}" if r["data_only_ms"] is not None else f"{'-':>12}"
        print(f"{r['engine']:<10} {r['backend']:<10} {r['loss_path']:<8} {r['data']:<8} {r['tokens_per_s']:>10.0f} "
              f"{r['tflops']:>8.1f} {r['mfu']:>7.1%} {r['step_s']:>8.3f} {r['data_ms']:>8.3f} {only} "
              f"{r['peak_mem_gib']:>9.1f} {r['first_loss']:>7.3f}->{r['last_loss']:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
