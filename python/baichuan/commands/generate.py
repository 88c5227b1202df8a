"""`baichuan generate`: continue a prompt with a model folder, streaming text to the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from baichuan.devices import DTYPE_CHOICES

HELP = "Generate text from a model folder (native, exported transformers, or official baichuan-7B layout)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="prompt text; read from stdin when omitted or '-'")
    parser.add_argument(
        "--model", required=True,
        help="model folder: native (config.json + model.safetensors), exported or official transformers "
        "layout, or a DeepSpeed checkpoint directory written by `baichuan train`",
    )
    parser.add_argument(
        "--tokenizer", help="SentencePiece .model (default: the tokenizer.model stored with the model)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default 64 (upstream example)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k best (0 = off)")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.1, help="default 1.1 (upstream example); 1.0 = off"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--bos", action="store_true", help="prepend BOS to the prompt")
    parser.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument(
        "--attn-backend", default=None, choices=["auto", "sdpa", "eager", "xformers"],
        help="attention kernel (default: the model config's, normally auto)",
    )


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from baichuan import Tokenizer
    from baichuan.checkpoint import checkpoint_folder, find_tokenizer, load_pretrained
    from baichuan.devices import resolve_device, resolve_dtype
    from baichuan.errors import BaichuanError, as_user_error
    from baichuan.generate import GenerationConfig, check_vocab, generate

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    model_dir = checkpoint_folder(args.model)  # a missing folder is named as such (cli prints it)
    tok_path = Path(args.tokenizer) if args.tokenizer else find_tokenizer(model_dir) or model_dir / "tokenizer.model"
    if not tok_path.is_file():
        raise BaichuanError(f"tokenizer model not found: {tok_path} (pass --tokenizer)")
    prompt = args.prompt
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    device = torch.device(resolve_device(args.device))
    dtype = resolve_dtype(args.dtype, device.type)
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        add_bos=args.bos,
    )
    with as_user_error(ValueError, RuntimeError):
        cfg.validate()
        tok = Tokenizer.from_file(tok_path)
        model = load_pretrained(model_dir, device=device, dtype=dtype,
                                attn_backend=args.attn_backend)
        check_vocab(model, tok, str(tok_path))
    stream = None if args.no_stream else sys.stdout
    text = generate(model, tok, prompt, cfg, stream=stream)
    if args.no_stream:
        sys.stdout.write(text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
