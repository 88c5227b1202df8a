#!/usr/bin/env python3
"""As run on the H200 on 2026-11-26 (call 3; see docs/performance.md, "Diagnosis"): why the
prefix-cache scorer was slower than plain batching. Usage: python scripts/gpu_diag/scoring_speed.py SHARED_DIR
(SHARED_DIR holds spm-models/ and eval-data/). The "lower_right" variant it patches in is now the
model's own behaviour (commit 4de5c8a)."""
import sys, time, statistics
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F
from baichuan import Tokenizer
from baichuan.config import ModelConfig
from baichuan.evaluation.benchmarks import get_benchmark, resolve_data_dir
from baichuan.evaluation.runner import Encoder, build_prompts, candidate_ids
from baichuan.evaluation.scoring import LetterScorer
import baichuan.model as M

shared = Path(sys.argv[1])
dev = torch.device("cuda")
cfg = ModelConfig.preset("7b", num_hidden_layers=8, max_position_embeddings=4096)
torch.manual_seed(0)
with torch.device(dev):
    model = M.BaichuanForCausalLM(cfg)
model = model.to(torch.bfloat16).eval()
tok = Tokenizer.from_file(shared / "spm-models/baichuan-7b.model")
bench = get_benchmark("mmlu")
dd = resolve_data_dir("mmlu", str(shared / "eval-data/mmlu"))
subs = bench.subjects(dd, "test")[:4]
cand = candidate_ids(tok, "ABCD")
groups = []
for s in subs:
    d = bench.load(dd, s, "test")
    items = build_prompts(bench, d, 5, Encoder(tok, False), 2048, d.questions[:64])
    groups.append([it.ids for it in items])
print("prompt lens", [int(np.mean([len(x) for x in g])) for g in groups])

orig = M._attention_sdpa
def sdpa_lower_right(q, k, v, mask):
    from torch.nn.attention.bias import causal_lower_right
    if isinstance(mask, torch.Tensor) and mask.shape[0] == 1 and q.shape[2] > 1 and q.shape[2] < k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))
    return orig(q, k, v, mask)

def run(cache, backend, bs=32):
    model.set_attn_backend(backend)
    sc = LetterScorer(model, cand, batch_size=bs, prefix_cache=cache, device=dev)
    torch.cuda.synchronize(); t = time.perf_counter()
    outs = [sc.score(g) for g in groups]
    torch.cuda.synchronize()
    return time.perf_counter() - t, np.concatenate(outs)

n = sum(len(g) for g in groups)
ref = None
for label, cache, backend, patch in [("nocache sdpa", False, "sdpa", None), ("cache sdpa", True, "sdpa", None),
                                     ("cache eager", True, "eager", None), ("nocache eager", False, "eager", None),
                                     ("cache sdpa lower_right", True, "sdpa", sdpa_lower_right)]:
    M._attention_sdpa = patch or orig
    ts = []
    for rep in range(3):
        t, out = run(cache, backend)
        ts.append(t)
    if ref is None: ref = out
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    print(f"{label:28s} runs {', '.join(f'{x:.2f}' for x in ts)} s -> {n / min(ts):.0f} q/s; argmax agree {agree:.3f}", flush=True)
M._attention_sdpa = orig
model.set_attn_backend("sdpa")
from torch.profiler import profile, ProfilerActivity
sc = LetterScorer(model, cand, batch_size=32, prefix_cache=True, device=dev)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    sc.score(groups[0]); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
