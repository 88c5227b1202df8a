#!/usr/bin/env python
"""Forward-pass time of BaichuanForCausalLM per attention backend on this machine (prints a table).

    python scripts/bench_model.py [--preset small] [--batch 4] [--seq 512] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from baichuan.config import ModelConfig
    from baichuan.model import BaichuanForCausalLM

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = BaichuanForCausalLM(ModelConfig.preset(args.preset)).to(device).eval()
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), device=device)
    backends = ["eager", "sdpa"] + (["xformers"] if device.type == "cuda" else [])
    print(f"preset {args.preset}, B={args.batch} T={args.seq}, {device}, fp32 forward, logits_to_keep=1")
    print("| backend | median ms | tokens/s |")
    print("| --- | --- | --- |")
    for backend in backends:
        model.set_attn_backend(backend)
        times = []
        with torch.inference_mode():
            for i in range(args.repeats + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids, logits_to_keep=1)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"| {backend} | {t * 1e3:.0f} | {args.batch * args.seq / t:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
