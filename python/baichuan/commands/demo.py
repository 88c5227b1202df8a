"""`baichuan demo`: the README's main job, the whole pipeline on an embedded default, on a CPU.

sample corpus (made at run time) -> train-tokenizer (small vocab) -> tokenize (shards) ->
a short DeepSpeed run (1 or 2 CPU ranks) -> checkpoint -> sample generation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HELP = "Run the whole pipeline on an embedded sample corpus (CPU, a few minutes)."

STEPS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="working directory (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=4000, help="tokenizer vocabulary (default: %(default)s)")
    parser.add_argument("--corpus-bytes", type=int, default=1_000_000,
                        help="size of the generated sample corpus in bytes (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60, help="training steps (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=128, help="training sequence length (default: %(default)s)")
    parser.add_argument("--num-procs", type=int, default=None,
                        help="DeepSpeed ranks on this machine (default: 2 when there are 2+ cores, else 1)")
    parser.add_argument("--prompt", default="百川分词器", help="prompt for the sample generation (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete a previous demo's files in --output first (only a folder `baichuan demo` wrote)")


def _stage(i: int, what: str) -> float:
    print(f"\n[{i}/{STEPS}] {what}", flush=True)
    return time.perf_counter()


def _done(t0: float, detail: str) -> None:
    print(f"      done in {time.perf_counter() - t0:.1f}s: {detail}", flush=True)


def run(args: argparse.Namespace) -> int:
    from baichuan.corpus import TokenizeConfig, run_tokenize, summary_table
    from baichuan.safety import KINDS, plan_output
    from baichuan.sample_corpus import write_sample_corpus
    from baichuan.tokenizer_training import TrainTokenizerConfig, train_tokenizer

    out = Path(args.output)
    # Refused before any work; --overwrite deletes only a previous demo's own files (baichuan.safety).
    plan_output(out, "demo", overwrite=args.overwrite).apply(KINDS["demo"].patterns)
    num_procs = args.num_procs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    t_all = time.perf_counter()

    t = _stage(1, "sample corpus: this Python's stdlib docstrings + text written for the project")
    corpus = write_sample_corpus(out / "corpus", max_bytes=args.corpus_bytes)
    _done(t, f"{len(corpus.files)} files, {corpus.bytes / 1e6:.2f} MB in {corpus.directory}")

    t = _stage(2, f"train-tokenizer: SentencePiece BPE with Baichuan-7B's recipe, vocab {args.vocab_size}")
    import sentencepiece

    sentencepiece.set_min_log_level(2)  # the trainer's log is hundreds of lines; `baichuan train-tokenizer --verbose` shows it
    tok = train_tokenizer(TrainTokenizerConfig(
        inputs=[str(corpus.directory)], model_prefix=str(out / "tokenizer"),
        vocab_size=args.vocab_size, character_coverage=0.9995))
    _done(t, f"{tok.model_path}")

    t = _stage(3, "tokenize: corpus -> memory-mapped token shards (Rust threads)")
    manifest = run_tokenize(TokenizeConfig(tokenizer=str(tok.model_path), inputs=[str(corpus.directory)],
                                           output=str(out / "shards")), progress=sys.stderr.isatty())
    print(summary_table(manifest), flush=True)
    _done(t, f"{manifest['counts']['tokens']:,} tokens in {out / 'shards'}")

    t = _stage(4, f"train: tiny model, {args.steps} steps, DeepSpeed on {num_procs} CPU rank(s)")
    model_dir = _train(args, out, Path(tok.model_path), num_procs)
    _done(t, f"model folder {model_dir}")

    t = _stage(5, f"generate: {args.prompt!r}")
    _generate(model_dir, args.prompt, args.max_new_tokens)
    _done(t, "sampled from the trained model (a tiny model on a tiny corpus: expect babble)")

    print(f"\nWhole pipeline in {time.perf_counter() - t_all:.0f}s. Next:", flush=True)
    print(f"  baichuan export-hf --checkpoint {model_dir} --output {out / 'hf'}")
    print(f"  baichuan generate --model {model_dir} \"{args.prompt}\"")
    print(f"  tensorboard --logdir {out / 'train'}")
    return 0


def _train(args: argparse.Namespace, out: Path, tokenizer: Path, num_procs: int) -> Path:
    from baichuan.checkpoint import Checkpointer
    from baichuan.launch import launch
    from baichuan.train import checkpoint_dir
    from baichuan.train_config import TrainConfig

    cfg = TrainConfig(
        data=str(out / "shards"), tokenizer=str(tokenizer), output_dir=str(out / "train"), model="tiny",
        max_length=args.max_length, micro_batch_size=4, steps=args.steps, lr=5e-3,
        warmup_steps=max(1, args.steps // 10), precision="fp32", save_every=args.steps, keep_last=1,
        progress=sys.stderr.isatty(), log_every=max(1, args.steps // 10))
    status = launch(cfg, num_procs=num_procs)
    if status in (130, 143):  # stopped by Ctrl-C or SIGTERM: launch() said so in one line
        raise SystemExit(status)
    if status != 0:
        raise SystemExit(f"baichuan demo: training failed (exit status {status}); see the output above")
    ckpt = Checkpointer(checkpoint_dir(cfg))
    tag = ckpt.latest()
    if tag is None:
        raise SystemExit(f"baichuan demo: training wrote no checkpoint under {ckpt.directory}")
    return ckpt.model_dir(tag)


def _generate(model_dir: Path, prompt: str, max_new_tokens: int) -> None:
    from baichuan import Tokenizer
    from baichuan.checkpoint import find_tokenizer, load
    from baichuan.generate import GenerationConfig, generate

    model = load(model_dir)
    tokenizer = Tokenizer.from_file(find_tokenizer(model_dir) or model_dir / "tokenizer.model")
    sys.stdout.write(prompt)
    generate(model, tokenizer, prompt,
             GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.9, repetition_penalty=1.1, seed=0),
             stream=sys.stdout)
    sys.stdout.write("\n")
