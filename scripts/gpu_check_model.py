#!/usr/bin/env python
"""One short GPU job: do the attention backends (xformers, sdpa, eager) agree, and which is fastest?

    python scripts/gpu_check_model.py                  # on a CUDA machine, ~1-2 minutes on an H100/H200
    python scripts/gpu_check_model.py --allow-cpu --tiny   # smoke run of the code paths on a CPU

1. Agreement: a Baichuan-7B-width model (hidden 4096, 32 heads, ffn 11008, vocab 64000, 2 layers
   by default) in bf16 runs forward + backward once per backend on the same batch (causal, then
   with left padding). Logits, loss and gradients are compared against an fp32 eager reference of
   the same weights: every backend's bf16 error should be of the same size.
2. Speed: causal attention alone, fwd+bwd, B=2 S=4096 H=32 D=128 bf16 (the shape of
   ../shared/gpu/README.md; FLOPs = 7*B*S^2*H*D), and a full training step of the 2-layer model
   (tokens/s, MFU via BaichuanForCausalLM.estimate_mfu against 989.4 TFLOP/s).
It prints tables and which backend ``attn_backend="auto"`` uses (sdpa) against the fastest measured.
Without CUDA it exits with status 2 and says so (unless --allow-cpu).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048, help="sequence length of the agreement/model runs")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--attn-seq", type=int, default=4096, help="sequence length of the attention timing")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU (smoke test of the script only)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (with --allow-cpu)")
    return p.parse_args()


def main() -> int:
    args = parse()
    import torch

    from baichuan.config import ModelConfig
    from baichuan.model import (
        BaichuanForCausalLM,
        _attention_eager,
        _attention_sdpa,
        _attention_xformers,
        xformers_available,
    )

    if torch.cuda.is_available():
        device = torch.device("cuda")
        card = torch.cuda.get_device_name(0)
    elif args.allow_cpu:
        device = torch.device("cpu")
        card = "CPU (smoke run; timings meaningless)"
    else:
        print("gpu_check_model.py: no CUDA device visible (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or pass --allow-cpu for a smoke run", file=sys.stderr)
        return 2

    backends = ["eager", "sdpa"]
    if device.type == "cuda" and xformers_available():
        backends.append("xformers")
    notes = []
    if "xformers" not in backends:
        notes.append("xformers: " + ("not installed (pip install 'baichuan-stack[gpu]')" if device.type == "cuda"
                                     else "needs CUDA"))
    print(f"device: {card}; torch {torch.__version__}")
    if device.type == "cuda" and xformers_available():
        import xformers

        print(f"xformers {xformers.__version__}")

    if args.tiny:
        cfg = ModelConfig.preset("tiny", num_hidden_layers=args.layers)
        seq, attn_shape = min(args.seq, 128), (2, min(args.attn_seq, 256), 4, 16)
    else:
        cfg = ModelConfig(num_hidden_layers=args.layers)
        seq, attn_shape = args.seq, (2, args.attn_seq, 32, 128)
    B = args.batch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # ------------------------------------------------------------------ 1. agreement
    torch.manual_seed(0)
    base = BaichuanForCausalLM(cfg)
    ids = torch.randint(3, cfg.vocab_size, (B, seq), device=device)
    mask = torch.ones(B, seq, dtype=torch.long, device=device)
    mask[0, : seq // 4] = 0  # left padding on row 0
    labels = ids.masked_fill(mask == 0, -100)

    def run(backend: str, dtype: torch.dtype, padded: bool):
        m = copy.deepcopy(base).to(device=device, dtype=dtype)
        m.config = copy.deepcopy(cfg)
        m.set_attn_backend(backend)
        m.train()
        out = m(ids, attention_mask=mask if padded else None, labels=labels if padded else ids)
        out.loss.backward()
        grads = {n: p.grad.float() for n, p in m.named_parameters()}
        logits = out.logits.float().detach()
        loss = out.loss.item()
        del m, out
        return logits, loss, grads

    def rel(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
        if where is not None:
            a, b = a[where], b[where]
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    rows = []
    for padded in (False, True):
        ref_logits, ref_loss, ref_grads = run("eager", torch.float32, padded)
        valid = (mask == 1) if padded else None
        for backend in backends:
            logits, loss, grads = run(backend, torch.bfloat16, padded)
            gerr = max(rel(grads[n], ref_grads[n]) for n in ref_grads)
            werr = rel(grads["model.layers.0.self_attn.W_pack.weight"],
                       ref_grads["model.layers.0.self_attn.W_pack.weight"])
            rows.append((("left-padded" if padded else "causal"), backend, rel(logits, ref_logits, valid),
                         abs(loss - ref_loss), werr, gerr))
        del ref_logits, ref_grads
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n1. agreement vs fp32 eager (model {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"B={B} S={seq}, bf16)")
    print("| mask | backend | logits max rel err | |loss diff| | W_pack[0] grad rel err | worst grad rel err |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2e} | {r[3]:.2e} | {r[4]:.2e} | {r[5]:.2e} |")

    # ------------------------------------------------------------------ 2. attention timing
    Ba, S, H, D = attn_shape
    fns = {"eager": _attention_eager, "sdpa": _attention_sdpa, "xformers": _attention_xformers}
    flops = 7.0 * Ba * S * S * H * D
    attn_rows = []
    for backend in backends:
        q, k, v = (torch.randn(Ba, H, S, D, device=device, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        g = torch.randn(Ba, H, S, D, device=device, dtype=torch.bfloat16)
        times = []
        try:
            for i in range(args.iters + 3):
                sync()
                t0 = time.perf_counter()
                out = fns[backend](q, k, v, "causal")
                out.backward(g)
                sync()
                if i >= 3:
                    times.append(time.perf_counter() - t0)
                q.grad = k.grad = v.grad = None
            t = statistics.median(times)
            attn_rows.append((backend, t * 1e3, flops / t / 1e12))
        except RuntimeError as e:  # eager at S=4096 may not fit on small cards
            attn_rows.append((backend, float("nan"), float("nan")))
            notes.append(f"attention timing {backend}: {str(e).splitlines()[0]}")
        del q, k, v, g
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n2a. causal attention fwd+bwd, B={Ba} S={S} H={H} D={D} bf16, median of {args.iters}")
    print("| backend | ms | TFLOP/s |")
    print("| --- | --- | --- |")
    for b, ms, tf in attn_rows:
        print(f"| {b} | {ms:.2f} | {tf:.0f} |")

    # ------------------------------------------------------------------ 2b. model step timing
    step_rows = []
    for backend in backends:
        m = copy.deepcopy(base).to(device=device, dtype=torch.bfloat16)
        m.config = copy.deepcopy(cfg)
        m.set_attn_backend(backend)
        m.train()
        times = []
        for i in range(args.iters + 2):
            sync()
            t0 = time.perf_counter()
            m(ids, labels=ids).loss.backward()
            sync()
            if i >= 2:
                times.append(time.perf_counter() - t0)
            m.zero_grad(set_to_none=True)
        t = statistics.median(times)
        tok_s = B * seq / t
        step_rows.append((backend, t * 1e3, tok_s, m.estimate_mfu(tok_s, seq)))
        del m
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n2b. model fwd+bwd (no optimizer), {cfg.num_hidden_layers} layers, B={B} S={seq} bf16")
    print("| backend | ms/step | tokens/s | MFU |")
    print("| --- | --- | --- | --- |")
    for b, ms, ts, mfu in step_rows:
        print(f"| {b} | {ms:.1f} | {ts:,.0f} | {100 * mfu:.1f}% |")

    fastest = min((r for r in attn_rows if r[1] == r[1]), key=lambda r: r[1])[0]
    print(f"\nauto uses: sdpa; fastest attention measured here: {fastest}")
    for n in notes:
        print("note:", n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
