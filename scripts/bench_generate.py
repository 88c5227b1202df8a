#!/usr/bin/env python3
"""Decoding speed with the KV cache: tokens/s of ``generate_ids`` with PyTorch's SDPA allowed to
use cuDNN and without it (the default since 2026-11-26: cuDNN builds an execution plan for every
new key length, i.e. for every decoding step; see docs/performance.md, "Decoding").

    python scripts/bench_generate.py                         # CUDA: 7B shape, 8 layers, bf16
    python scripts/bench_generate.py --config tiny --device cpu   # CPU smoke run (cuDNN is moot)

Each repetition uses a slightly different prompt length, so every run meets new shapes as a real
one does. Prints a table; no thresholds.
"""

from __future__ import annotations

import argparse
import time

import torch

from baichuan.config import ModelConfig
from baichuan.generate import GenerationConfig, generate_ids
from baichuan.model import BaichuanForCausalLM


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="model preset: 7b (default on CUDA) or tiny (default on CPU)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 8 for 7b)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = args.config or ("7b" if device.type == "cuda" else "tiny")
    overrides: dict[str, int] = {"max_position_embeddings": 4096}
    layers = args.layers or (8 if preset == "7b" else None)
    if layers:
        overrides["num_hidden_layers"] = layers
    cfg = ModelConfig.preset(preset, **overrides)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = BaichuanForCausalLM(cfg).to(dtype).eval()
    prompt = torch.randint(3, cfg.vocab_size, (args.prompt_tokens + 64,)).tolist()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# bench_generate: {preset} shape, {cfg.num_hidden_layers} layers, {dtype}, {name}; "
          f"{args.new_tokens} new tokens after ~{args.prompt_tokens} prompt tokens, greedy")
    print("| repetition | prompt tokens | SDPA may use cuDNN | tokens/s | SDPA without cuDNN (default) | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for rep in range(args.reps):
        row = []
        for cudnn in (True, False):
            n_prompt = args.prompt_tokens + 37 * rep + int(cudnn)
            gcfg = GenerationConfig(max_new_tokens=args.new_tokens, stop_at_eos=False, repetition_penalty=1.0,
                                    cudnn_attention=cudnn)
            sync()
            t = time.perf_counter()
            out = list(generate_ids(model, prompt[:n_prompt], gcfg))
            sync()
            dt = time.perf_counter() - t
            row.append((n_prompt, dt, len(out) / dt))
        (n0, s0, r0), (n1, s1, r1) = row[0], row[1]
        print(f"| {rep + 1} | {n0}/{n1} | {s0:.2f} s | {r0:.1f} | {s1:.2f} s | {r1:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
