#!/usr/bin/env python3
"""LM-head + cross-entropy forward/backward through the model's head, ``baichuan.model.LMHead``
(what ``BaichuanForCausalLM(input_ids, labels=..., ce_chunk=N)`` calls): plain (``ce_chunk=0``,
fp32 logits for every token) vs chunked (``ce_chunk=N``). Prints time and peak memory per
configuration.

Each configuration runs in a child process; peak memory is ``torch.cuda.max_memory_allocated``
on a GPU, and the growth of the child's peak RSS over its state before the call on a CPU.

    python scripts/bench_loss.py                          # GPU if present: 2 x 4096 tokens, 4096 x 64000, bf16
    python scripts/bench_loss.py --tokens 2048 --hidden 512 --dtype fp32   # CPU-sized
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(a: argparse.Namespace) -> dict:
    import torch

    from baichuan.model import LMHead

    dev = torch.device("cuda" if torch.cuda.is_available() and not a.cpu else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.tokens, a.hidden, generator=g).to(dev, dtype).requires_grad_()
    head = LMHead(a.hidden, a.vocab)
    with torch.no_grad():
        head.weight.copy_(0.02 * torch.randn(a.vocab, a.hidden, generator=g))
    head = head.to(dev, dtype)
    t = torch.randint(0, a.vocab, (a.tokens,), generator=g).to(dev)
    chunk = a.chunk if a.mode == "chunked" else 0

    def step() -> float:
        loss = head(h, t, ce_chunk=chunk)
        loss.backward()
        h.grad = None
        head.weight.grad = None
        return float(loss)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the first call: includes its peak
    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        loss = step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"mode": a.mode, "chunk": a.chunk if a.mode == "chunked" else 0, "ms": statistics.median(times) * 1e3,
            "extra_peak_mib": peak, "loss": loss, "device": str(dev)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=64000)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--chunks", default="1024,2048,4096")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.mode:
        print("RESULT " + json.dumps(child(a)))
        return 0
    runs = [("plain", 0)] + [("chunked", int(c)) for c in a.chunks.split(",")]
    rows = []
    for mode, chunk in runs:
        cmd = [sys.executable, __file__, "--mode", mode, "--chunk", str(chunk), "--tokens", str(a.tokens),
               "--hidden", str(a.hidden), "--vocab", str(a.vocab), "--dtype", a.dtype, "--repeat", str(a.repeat)]
        if a.cpu:
            cmd.append("--cpu")
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{mode} {chunk}: failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(line[7:]))
    dev = rows[0]["device"] if rows else "?"
    print(f"LM head + CE fwd+bwd, {a.tokens} tokens x hidden {a.hidden} x vocab {a.vocab}, {a.dtype}, {dev}")
    print(f"{'path':<8} {'chunk':>6} {'ms':>9} {'extra peak MiB':>15} {'loss':>9}")
    for r in rows:
        print(f"{r['mode']:<8} {r['chunk']:>6} {r['ms']:>9.1f} {r['extra_peak_mib']:>15.0f} {r['loss']:>9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
