"""Sizes and counts written with a unit suffix on the command line: ``64M``, ``10M``, ``2GB``.

One rule for every flag that takes a size or a count (``tokenize --shard-size``,
``--max-doc-bytes``, ``train-tokenizer --input-sentence-size``), chosen so that every spelling an
earlier version accepted keeps its meaning:

* a plain number: itself (``20000``, ``1e6``, ``10_000_000``);
* ``K``, ``M``, ``G``, ``T`` and ``Ki``, ``Mi``, ``Gi``, ``Ti``, optionally followed by ``B``
  (``64M``, ``64MiB``): powers of 1024, as ``baichuan tokenize`` has always read them;
* ``KB``, ``MB``, ``GB``, ``TB``: powers of 1000, as Hugging Face's ``max_shard_size`` reads them
  (``export-hf --max-shard-size 2GB``); a bare ``B`` is a byte count (``500B``).

Case does not matter; a fraction is rounded down (``1.5K`` = 1536).

Also the one peak-FLOPs figure MFU is measured against (``train --peak-tflops``,
``BaichuanForCausalLM.estimate_mfu``, ``scripts/bench_train.py``).
"""

from __future__ import annotations

import argparse
import re

# Dense bf16 peak of one H100/H200 SXM (datasheet), the denominator used in ../shared/gpu/README.md.
H100_BF16_PEAK_TFLOPS = 989.4

_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SIZE = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*(?:([KMGT])(I?))?(B?)\s*", re.IGNORECASE)


class SizeError(ValueError):
    """A size or count that cannot be read; ``value`` is the number read when it was read but
    is not positive (``None``: not a size at all)."""

    def __init__(self, message: str, value: int | None = None) -> None:
        super().__init__(message)
        self.value = value


def parse_size(text: str | int) -> int:
    """``'20000'``, ``'64K'``, ``'10M'``, ``'256MiB'`` (powers of 1024), ``'2GB'`` (powers of
    1000) -> a positive int. Raises :class:`SizeError` naming the text."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.fullmatch(text)
        if m is None:
            raise SizeError(f"not a size: {text!r} (e.g. 20000, 64K, 10M, 256MiB, 2GB)")
        number, prefix, binary, byte = m.groups()
        prefix = (prefix or "").upper()
        mult = _DECIMAL[prefix] if (prefix and byte and not binary) else _BINARY[prefix]
        value = int(float(number.replace("_", "")) * mult)
    if value <= 0:
        raise SizeError(f"must be positive: {text!r}", value)
    return value


def size_arg(text: str) -> int:
    """:func:`parse_size` for ``argparse`` (``type=size_arg``): a bad value is a usage error
    naming the flag."""
    try:
        return parse_size(text)
    except SizeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
