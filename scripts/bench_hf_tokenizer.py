#!/usr/bin/env python3
"""Batch tokenization through the transformers API: ``tokenizer(list_of_texts)`` of an exported
folder's tokenizer (Rust backend, and its sentencepiece fallback) against transformers' own slow
(sentencepiece) and converted fast (HF tokenizers) Llama tokenizers of the same ``.model``, on the
evaluation data's text fields (~23 MB of mixed zh/en). Prints a table: MB/s, speed relative to
transformers' slow tokenizer, and how many texts get exactly sentencepiece's ids.

    python scripts/bench_hf_tokenizer.py                          # Baichuan-7B, whole corpus
    python scripts/bench_hf_tokenizer.py --limit-mb 5 --batch-size 256

Each figure is the best of --reps passes over the corpus in batches of --batch-size texts
(``tokenizer(batch)``, default options: no padding, no special tokens for these models). Timings
are for this machine only; there are no thresholds here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tokenizer_corpus import EVAL_DIR, eval_texts, model_path  # noqa: E402

Encode = Callable[[Sequence[str]], list[list[int]]]


@dataclass
class Row:
    name: str
    api: str
    seconds: float
    identical: int


def tokenizer_folder(model: Path, folder: Path) -> Path:
    """What `baichuan export-hf` writes for the tokenizer: tokenizer.model, the remote code, config."""
    from baichuan import Tokenizer
    from baichuan.hf import TOKENIZER_AUTO_MAP

    tok = Tokenizer.from_file(model)
    shutil.copyfile(model, folder / "tokenizer.model")
    src = ROOT / "python" / "baichuan" / "hf_remote" / "tokenization_baichuan.py"
    shutil.copyfile(src, folder / "tokenization_baichuan.py")
    config = {
        "auto_map": TOKENIZER_AUTO_MAP, "tokenizer_class": "BaiChuanTokenizer",
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "bos_token": tok.id_to_piece(tok.bos_id), "eos_token": tok.id_to_piece(tok.eos_id),
        "unk_token": tok.id_to_piece(tok.unk_id), "pad_token": tok.id_to_piece(tok.unk_id),
        "model_max_length": 1 << 30,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def ours(folder: Path, backend: str) -> Encode:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, tokenizer_backend=backend)
    assert tok.backend_name == backend, tok.backend_name
    return lambda batch: tok(list(batch))["input_ids"]


def transformers_slow(model: Path) -> Encode:
    """transformers' pure-Python sentencepiece tokenizer (v5: SentencePieceBackend; v4: the slow
    LlamaTokenizer)."""
    try:
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend as Slow

        tok = Slow(vocab_file=str(model), pad_token="<unk>")
    except ImportError:  # transformers 4.x
        from transformers import LlamaTokenizer as Slow

        tok = Slow(vocab_file=str(model), legacy=True, add_bos_token=False, add_eos_token=False)
    return lambda batch: tok(list(batch), add_special_tokens=False)["input_ids"]


def transformers_fast(model: Path, folder: Path) -> Encode:
    """transformers' Llama tokenizer converted to HF tokenizers from the same .model."""
    (folder / "tokenizer.model").symlink_to(model.resolve())
    try:
        from transformers import LlamaTokenizerFast as Fast  # transformers 4.x
    except ImportError:
        from transformers import LlamaTokenizer as Fast  # transformers 5: the tokenizers-backed one
    tok = Fast.from_pretrained(folder, legacy=True, add_bos_token=False, add_eos_token=False, from_slow=True)
    assert tok.is_fast
    return lambda batch: tok(list(batch), add_special_tokens=False)["input_ids"]


def sentencepiece_raw(model: Path) -> Encode:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return lambda batch: sp.encode(list(batch))


def rust_raw(model: Path) -> Encode:
    from baichuan import Tokenizer

    tok = Tokenizer.from_file(model)
    return lambda batch: tok.encode_batch(list(batch))


def run(name: str, api: str, encode: Encode, batches: list[list[str]], ref: list[list[int]], reps: int) -> Row:
    times = []
    ids: list[list[int]] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ids = [x for batch in batches for x in encode(batch)]
        times.append(time.perf_counter() - t0)
    identical = sum(a == b for a, b in zip(ids, ref))
    print(f"  {name} ({api}): best {min(times):.2f}s of {[round(t, 2) for t in times]}", file=sys.stderr)
    return Row(name, api, min(times), identical)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="baichuan-7b", help="model name in ../shared/spm-models, or a path")
    ap.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    ap.add_argument("--limit-mb", type=float, default=0.0, help="use only the first N MB of text (0 = all)")
    ap.add_argument("--batch-size", type=int, default=1000, help="texts per tokenizer(...) call")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)

    model = Path(args.model) if Path(args.model).is_file() else model_path(args.model)
    if not model.is_file():
        print(f"bench_hf_tokenizer: model not found: {model}", file=sys.stderr)
        return 2
    texts = eval_texts(args.eval_dir)
    if args.limit_mb > 0:
        budget, kept = int(args.limit_mb * 1e6), []
        for t in texts:
            budget -= len(t.encode("utf-8"))
            if budget < 0:
                break
            kept.append(t)
        texts = kept
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    print(f"{len(texts)} texts, {mb:.1f} MB, batches of {args.batch_size}; model {model.name}", file=sys.stderr)
    ref = sentencepiece_raw(model)(texts)

    with tempfile.TemporaryDirectory() as d:
        ours_dir = tokenizer_folder(model, Path(d))
        fast_dir = Path(d) / "llama"
        fast_dir.mkdir()
        contenders = [
            ("transformers slow (sentencepiece)", "tokenizer(batch)", transformers_slow(model)),
            ("transformers fast (converted to HF tokenizers)", "tokenizer(batch)", transformers_fast(model, fast_dir)),
            ("export, sentencepiece backend", "tokenizer(batch)", ours(ours_dir, "sentencepiece")),
            ("export, Rust backend (baichuan)", "tokenizer(batch)", ours(ours_dir, "baichuan")),
            ("sentencepiece, no transformers", "sp.encode(batch)", sentencepiece_raw(model)),
            ("baichuan.Tokenizer, no transformers", "encode_batch(batch)", rust_raw(model)),
        ]
        rows = [run(name, api, enc, batches, ref, args.reps) for name, api, enc in contenders]

    slow = rows[0].seconds
    print(f"\n{len(texts)} texts, {mb:.1f} MB ({args.eval_dir.name}), batches of {args.batch_size}, "
          f"best of {args.reps}\n")
    print("| tokenizer | call | MB/s | vs transformers slow | texts with sentencepiece's ids |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r.name} | `{r.api}` | {mb / r.seconds:.1f} | {slow / r.seconds:.2f}x | "
              f"{r.identical}/{len(texts)} ({100 * r.identical / len(texts):.1f}%) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
