#!/usr/bin/env python3
"""As run on the H200 on 2026-11-26 (call 4; docs/performance.md): prefix-cached vs full-forward
scoring per attention backend (eager, sdpa, xformers) in fp32 and bf16.
Usage: python scripts/gpu_diag/scoring_backends.py SHARED_DIR"""
import sys
from pathlib import Path
import numpy as np, torch
from baichuan import Tokenizer
from baichuan.config import ModelConfig
from baichuan.evaluation.benchmarks import get_benchmark, resolve_data_dir
from baichuan.evaluation.runner import Encoder, build_prompts, candidate_ids
from baichuan.evaluation.scoring import LetterScorer
from baichuan.model import BaichuanForCausalLM
shared = Path(sys.argv[1]); dev = torch.device("cuda")
tok = Tokenizer.from_file(shared / "spm-models/baichuan-7b.model")
bench = get_benchmark("mmlu"); dd = resolve_data_dir("mmlu", str(shared / "eval-data/mmlu"))
d = bench.load(dd, bench.subjects(dd, "test")[10], "test")
seqs = [it.ids for it in build_prompts(bench, d, 5, Encoder(tok, False), 2048, d.questions[:24])]
cand = candidate_ids(tok, "ABCD")
torch.manual_seed(0)
with torch.device(dev):
    base = BaichuanForCausalLM(ModelConfig.preset("7b", num_hidden_layers=2, max_position_embeddings=4096)).eval()
for dtype in (torch.float32, torch.bfloat16):
    m = base.to(dtype)
    m.set_attn_backend("eager")
    ref = LetterScorer(m, cand, batch_size=8, prefix_cache=False, device=dev).score(seqs)
    for b in ("eager", "sdpa", "xformers"):
        m.set_attn_backend(b)
        for cache in (False, True):
            got = LetterScorer(m, cand, batch_size=8, prefix_cache=cache, device=dev).score(seqs)
            print(f"{str(dtype):15s} {b:9s} prefix_cache={cache!s:5s} max|logit diff| vs eager full {np.abs(got - ref).max():.3e}"
                  f" argmax agree {np.mean(got.argmax(1) == ref.argmax(1)):.3f}", flush=True)
