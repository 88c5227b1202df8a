"""`baichuan export-hf`: a checkpoint -> a transformers folder loadable with trust_remote_code."""

from __future__ import annotations

import argparse
import sys

from baichuan.devices import DTYPE_CHOICES

HELP = "Export a checkpoint (native folder, DeepSpeed checkpoint or transformers folder) to a transformers folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True,
        help="native model folder (config.json + model.safetensors), DeepSpeed checkpoint directory "
        "(with `latest`, or one global_stepN folder), or a transformers/official baichuan-7B folder",
    )
    parser.add_argument("--output", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--tokenizer", help="SentencePiece .model (default: CHECKPOINT/tokenizer.model)")
    parser.add_argument(
        "--config", help="model config.json or preset name, for DeepSpeed checkpoints without one beside them"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES,
        help="weight dtype to write (auto keeps the checkpoint's, e.g. its model/ folder's for a DeepSpeed checkpoint)",
    )
    parser.add_argument(
        "--max-shard-size", default="2GB",
        help="largest safetensors shard, e.g. 500MB (KB, MB, GB: powers of 1000; KiB, MiB, GiB: powers of 1024) "
        "(default 2GB)",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous export-hf output in --output (only a folder this command wrote)")


def run(args: argparse.Namespace) -> int:
    import logging

    from baichuan.errors import as_user_error
    from baichuan.hf import export_hf

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with as_user_error(ValueError):
        out = export_hf(
            args.checkpoint,
            args.output,
            tokenizer=args.tokenizer,
            config=args.config,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    print(f"wrote {out}: load with AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
