#!/usr/bin/env python3
"""MMLU 5-shot scoring throughput: upstream's one-question-at-a-time loop vs ours.

A random-weight Baichuan-7B-shaped model (hidden 4096, 32 heads, SwiGLU 11008, vocab 64000; the
number of layers is ``--layers``, 8 by default so it fits any 40 GB+ card and stays realistic per
layer) scores the same MMLU test questions three ways:

- ``upstream``: Baichuan-7B's ``evaluate_mmlu.py`` loop: per question, tokenize the 5-shot prompt
  (dropping shots while > 2048 tokens), one full forward at batch 1, full logits, take the last
  position's four letter logits, softmax.
- ``batched``: ours without the prefix cache: prompts sorted by length, right-padded batches,
  only the last position projected through the LM head.
- ``ours``: batched plus the shared few-shot prefix computed once per subject, its KV cache
  expanded over each batch (``baichuan eval``'s default path). On CUDA a second ``ours`` row lets
  SDPA use cuDNN, which plans anew for every batch shape (the default keeps it off for scoring).

Each method first scores one subject that is not timed (kernels, allocator, cuBLAS handles), so
the timed subjects bring shapes it has not seen, as a real run's do. The upstream loop uses eager
attention (matmul + softmax), as Baichuan-7B's modeling file does at inference (``--upstream-attn``).

It prints a Markdown table (questions/s, speed-up over upstream) and checks that all three give the
same predictions (probabilities within bf16 tolerance). Runs on a CPU with ``--config tiny`` as a
sanity check (numbers there say nothing about GPUs).

    python scripts/bench_eval.py --data-dir ../shared/eval-data/mmlu \\
        --tokenizer ../shared/spm-models/baichuan-7b.model                  # GPU: 7b shape, 8 layers
    python scripts/bench_eval.py --config tiny --device cpu --per-subject 8 --subjects 6   # CPU sanity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from baichuan import Tokenizer
from baichuan.config import ModelConfig
from baichuan.evaluation.benchmarks import get_benchmark, resolve_data_dir
from baichuan.evaluation.runner import Encoder, PromptItem, build_prompts, candidate_ids, score_subject
from baichuan.evaluation.scoring import LetterScorer
from baichuan.model import BaichuanForCausalLM

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def upstream_loop(model: torch.nn.Module, tok: Tokenizer, bench, data, questions, cand, device, max_length):  # noqa: ANN001
    """evaluate_mmlu.py's eval(): tokenize, shrink k while > max_length, full forward, 4 logits."""
    probs = []
    for q in questions:
        k = 5
        prompt = bench.prompt(data.subject, data.shots[:k], q)
        ids = tok.encode(prompt)
        while len(ids) > max_length and k > 0:
            k -= 1
            prompt = bench.prompt(data.subject, data.shots[:k], q)
            ids = tok.encode(prompt)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[:, -1].flatten()
        p = torch.softmax(torch.stack([logits[c] for c in cand]).float(), dim=0).cpu().numpy()
        probs.append(p)
    return np.stack(probs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(SHARED / "eval-data" / "mmlu"))
    ap.add_argument("--tokenizer", default=str(SHARED / "spm-models" / "baichuan-7b.model"))
    ap.add_argument("--config", default=None, help="model preset: 7b (default on CUDA) or tiny (default on CPU)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 8 for 7b)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="bf16 (CUDA default) or fp32 (CPU default)")
    ap.add_argument("--subjects", type=int, default=4, help="number of MMLU subjects (sorted order)")
    ap.add_argument("--per-subject", type=int, default=64, help="questions per subject")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--upstream-attn", default="eager", help="attention backend of the upstream loop [eager]")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = args.config or ("7b" if device.type == "cuda" else "tiny")
    layers = args.layers or (8 if preset == "7b" else None)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    ]
    overrides = {"max_position_embeddings": 4096}
    if layers:
        overrides["num_hidden_layers"] = layers
    cfg = ModelConfig.preset(preset, **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = BaichuanForCausalLM(cfg)
    model = model.to(dtype).eval()
    tok = Tokenizer.from_file(args.tokenizer)
    bench = get_benchmark("mmlu")
    data_dir = resolve_data_dir("mmlu", args.data_dir)
    all_subjects = bench.subjects(data_dir, "test")
    subjects = all_subjects[: args.subjects]
    subject_data = [bench.load(data_dir, s, "test") for s in subjects]
    chosen = [(d, d.questions[: args.per_subject]) for d in subject_data]
    warm = bench.load(data_dir, all_subjects[min(args.subjects, len(all_subjects) - 1)], "test")
    warm_qs = warm.questions[: args.batch_size]
    n = sum(len(qs) for _, qs in chosen)
    cand = candidate_ids(tok, "ABCD")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# bench_eval: {preset} shape, {cfg.num_hidden_layers} layers, {dtype}, {gpu}, torch threads "
          f"{torch.get_num_threads()}; MMLU test, {len(subjects)} subjects x {args.per_subject} = {n} questions, "
          f"5-shot, batch {args.batch_size}", flush=True)

    rows = []
    model.set_attn_backend(args.upstream_attn)
    upstream_loop(model, tok, bench, warm, warm_qs, cand, device, args.max_length)  # warm-up, untimed
    sync(device)
    t = time.perf_counter()
    ref = [upstream_loop(model, tok, bench, d, qs, cand, device, args.max_length) for d, qs in chosen]
    sync(device)
    rows.append((f"upstream loop (batch 1, full prompt, {args.upstream_attn} attention)", time.perf_counter() - t))
    ref_probs = np.concatenate(ref)
    model.set_attn_backend("auto")

    def ours(cache: bool, cudnn: bool, qsets: list) -> np.ndarray:  # type: ignore[type-arg]
        probs = []
        scorer = LetterScorer(model, cand, batch_size=args.batch_size, prefix_cache=cache, device=device,
                              cudnn_attention=cudnn)
        for d, qs in qsets:  # prompt building + tokenization are inside the timing, as upstream
            items: list[PromptItem] = build_prompts(bench, d, 5, Encoder(tok, False), args.max_length, qs)
            probs.append(score_subject(scorer, items, "ABCD")[1])
        return np.concatenate(probs)

    methods = [("batched, no prefix cache", False, False), ("ours: batched + prefix KV cache", True, False)]
    if device.type == "cuda":
        methods.append(("ours, SDPA allowed to use cuDNN", True, True))
    results = {}
    for name, cache, cudnn in methods:
        ours(cache, cudnn, [(warm, warm_qs)])  # warm-up, untimed
        sync(device)
        t = time.perf_counter()
        results[name] = ours(cache, cudnn, chosen)
        sync(device)
        rows.append((name, time.perf_counter() - t))

    base = rows[0][1]
    print("\n| method | questions | seconds | questions/s | speed-up |")
    print("|---|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {n} | {sec:.2f} | {n / sec:.1f} | {base / sec:.2f}x |")
    ok = True
    for name, probs in results.items():
        agree = float(np.mean(probs.argmax(1) == ref_probs.argmax(1)))
        diff = float(np.abs(probs - ref_probs).max())
        print(f"\n{name}: predictions agree with upstream on {100 * agree:.1f}%, max |prob diff| {diff:.2e}")
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        ok = ok and diff <= tol
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "device": gpu, "preset": preset, "layers": cfg.num_hidden_layers, "dtype": str(dtype),
            "questions": n, "batch_size": args.batch_size,
            "rows": [{"method": m, "seconds": s, "qps": n / s, "speedup": base / s} for m, s in rows],
        }, indent=1))
    if not ok:
        print("WARNING: probabilities differ beyond tolerance", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
