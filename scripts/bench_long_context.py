"""Peak memory per sequence length of a RoPE-scaled Baichuan model (long context), one fresh
subprocess per length and mode so every peak is that run's own.

    python scripts/bench_long_context.py                                  # CPU, tiny model
    python scripts/bench_long_context.py --device cuda --preset 7b --layers 8 --dtype bf16 \\
        --lengths 4096,8192,16384,32768                                   # GPU, 8-layer 7B slice

Modes (``--modes``, default both):

* ``train``: one training micro-batch (batch 1): forward, our chunked cross entropy
  (``model(ids[:, :-1], labels=ids, ce_chunk=1024)``: the logits are never whole), backward; no
  optimizer step, so the figure is weights + gradients + activations.
* ``prefill``: a ``torch.inference_mode`` forward over the whole prompt with a KV cache and only
  the last position's logits (what ``baichuan generate`` does before decoding).

The model gets ``rope_scaling`` yarn with the factor that makes its window cover the longest length
(``--rope-scaling`` to choose), attention ``sdpa`` (``--attn-backend``). Peak memory: on CPU the
process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus its resident set
just before the measured step (weights and imports excluded; a first step at 64 tokens has run), and
the peak RSS itself; on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
minus the memory allocated before the step. Prints a markdown table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass


@dataclass
class Row:
    mode: str
    seq_len: int
    peak_mib: float  # the step's own peak (above what was resident/allocated before it)
    process_peak_mib: float  # whole-process peak RSS (CPU) or peak allocated (CUDA)
    seconds: float
    tokens_per_s: float


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args: argparse.Namespace) -> Row:
    import torch

    from baichuan.config import ModelConfig, parse_rope_scaling
    from baichuan.model import BaichuanForCausalLM

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    overrides: dict = {"attn_backend": args.attn_backend, "max_position_embeddings": args.window}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    cfg = ModelConfig.preset(args.preset, **overrides)
    if args.rope_scaling:
        kind, factor = parse_rope_scaling(args.rope_scaling)
        cfg = cfg.with_rope_scaling(kind, factor)
    cfg.gradient_checkpointing = args.activation_checkpointing
    cfg.check_context(args.seq_len, f"--lengths {args.seq_len}")
    with torch.device(device):
        model = BaichuanForCausalLM(cfg).to(dtype)

    def step(n: int) -> None:
        ids = torch.randint(3, cfg.vocab_size, (1, n + 1), device=device)
        if args.mode == "train":
            model.train()
            model.zero_grad(set_to_none=False)
            loss = model(ids[:, :-1], labels=ids, ce_chunk=1024).loss
            loss.backward()
        else:
            model.eval()
            with torch.inference_mode():
                model(ids[:, :-1], use_cache=True, logits_to_keep=1)

    step(64)  # first-call allocations (kernels, grad buffers) outside the measurement
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mib()
    t0 = time.perf_counter()
    step(args.seq_len)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        process_peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        process_peak = _maxrss_mib()
    return Row(args.mode, args.seq_len, round(process_peak - base, 1), round(process_peak, 1),
               round(seconds, 3), round(args.seq_len / seconds, 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--modes", default="train,prefill")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int, default=0, help="num_hidden_layers override (0: the preset's)")
    p.add_argument("--window", type=int, default=4096, help="pre-training window (max_position_embeddings) [4096]")
    p.add_argument("--rope-scaling", default=None,
                   help="TYPE:FACTOR (default yarn with the factor covering the longest length)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--attn-backend", default="sdpa", choices=("sdpa", "eager", "xformers", "auto"))
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in each worker (0: torch's default)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per worker")
    p.add_argument("--json", default=None, help="write the rows here")
    # worker mode (one length, one mode, in a fresh process)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print("ROW " + json.dumps(asdict(worker(args))), flush=True)
        return 0

    lengths = [int(x) for x in args.lengths.split(",") if x]
    modes = [m for m in args.modes.split(",") if m]
    scaling = args.rope_scaling
    if scaling is None and max(lengths) > args.window:
        factor = max(2, -(-max(lengths) // args.window))  # ceil, at least 2
        scaling = f"yarn:{factor}"
    base_cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--preset", args.preset,
                "--layers", str(args.layers), "--window", str(args.window), "--device", args.device,
                "--dtype", args.dtype, "--attn-backend", args.attn_backend, "--threads", str(args.threads)]
    if scaling:
        base_cmd += ["--rope-scaling", scaling]
    if args.activation_checkpointing:
        base_cmd.append("--activation-checkpointing")
    rows: list[dict] = []
    what = f"preset {args.preset}" + (f", {args.layers} layers" if args.layers else "")
    print(f"# peak memory per sequence length: {what}, {args.dtype}, {args.device}, attention {args.attn_backend}, "
          f"rope_scaling {scaling or 'none'} (window {args.window}), batch 1"
          + (", activation checkpointing" if args.activation_checkpointing else ""))
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| mode | seq len | step peak MiB | process peak MiB | seconds | tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    status = 0
    for mode in modes:
        for n in lengths:
            cmd = [*base_cmd, "--seq-len", str(n), "--mode", mode]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"| {mode} | {n} | timeout after {args.timeout} s | | | |", flush=True)
                status = 1
                continue
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("ROW ")), None)
            if r.returncode != 0 or line is None:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {mode} | {n} | failed: {last[:120]} | | | |", flush=True)
                status = 1
                continue
            row = json.loads(line[4:])
            rows.append(row)
            print(f"| {mode} | {n} | {row['peak_mib']:.0f} | {row['process_peak_mib']:.0f} | "
                  f"{row['seconds']:.2f} | {row['tokens_per_s']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rope_scaling": scaling, "rows": rows}, f, indent=2)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
