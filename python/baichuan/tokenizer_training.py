"""Training a SentencePiece BPE tokenizer with Baichuan-7B's recipe.

The training itself is the ``sentencepiece`` library's trainer (a dependency of the ``[train]``
extra; install ``sentencepiece`` alone to use only this). The defaults are the ``trainer_spec`` and
``normalizer_spec`` recorded in Baichuan-7B's own ``tokenizer.model`` (``tests/test_train_tokenizer.py``
checks them field by field against ``../shared/spm-models/baichuan-7b.model``), except:

* ``num_threads``: the machine's cores instead of 120;
* the line-feed and tab symbols: the recorded trainer_spec lists ``<LF>`` and ``<tab>``, but the
  released model's pieces 5 and 6 are a real ``"\\n"`` and ``"\\t"`` (the pieces were edited after
  training); we train with ``"\\n"`` and ``"\\t"`` so that the result behaves like the released model.

Input: exactly the documents ``baichuan tokenize`` makes of the same inputs (the same Rust file
discovery and document reader: text files one document per line, JSONL's text field, ``.gz`` /
``.zst``, invalid UTF-8 dropped, stripped like Python's ``str.strip()``), each handed to the
trainer as one sentence; empty documents are skipped. Sampling of large corpora is
sentencepiece's own: ``input_sentence_size`` sentences drawn uniformly from all of them
(``shuffle_input_sentence``), with a fixed seed.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baichuan.errors import BaichuanError
from baichuan.units import size_arg


class TrainTokenizerError(BaichuanError):
    """An input that cannot be read, or options sentencepiece's trainer refuses (in our flag names)."""


# sentencepiece's TrainerSpec field -> our `baichuan train-tokenizer` flag
SPM_FLAGS: dict[str, str] = {
    "vocab_size": "--vocab-size",
    "character_coverage": "--character-coverage",
    "input_sentence_size": "--input-sentence-size",
    "max_sentencepiece_length": "--max-sentencepiece-length",
    "max_sentence_length": "--max-sentence-length",
    "user_defined_symbols": "--user-defined-symbols",
    "control_symbols": "--control-symbols",
    "split_digits": "--split-digits",
    "byte_fallback": "--no-byte-fallback",
    "num_threads": "--num-threads",
    "model_prefix": "--model-prefix",
}
_SPM_LOCATION = re.compile(r"^\s*(?:[A-Za-z_]+:\s*)?\S+\.cc\(\d+\)\s*(?:\[(.*?)\])?\s*", re.DOTALL)
_SPM_FIELD = re.compile(r"(?:--)?\b(?:trainer_spec_?\.|normalizer_spec_?\.)?(" + "|".join(SPM_FLAGS) + r")\b(?:\(\))?")


def translate_trainer_error(message: str) -> str:
    """sentencepiece's trainer error in our terms: its source location dropped, its field names
    (``character_coverage``, ``trainer_spec.vocab_size()``) replaced by our flags."""
    text = message.strip()
    condition = ""
    m = _SPM_LOCATION.match(text)
    if m:
        condition = (m.group(1) or "").strip()
        text = text[m.end() :].strip()
    text = _SPM_FIELD.sub(lambda f: SPM_FLAGS[f.group(1)], text)
    condition = _SPM_FIELD.sub(lambda f: SPM_FLAGS[f.group(1)], condition)
    if not text:
        return f"sentencepiece's trainer refused the options: it requires {condition}" if condition else message
    flags = [flag for flag in dict.fromkeys(re.findall(r"--[a-z-]+", condition)) if flag not in text]
    return f"sentencepiece's trainer: {text}" + (f" (check {', '.join(flags)})" if flags else "")

# Baichuan-7B's user-defined symbols before the reserved ones, in the released model's order
# (pieces 3..91): markup, digits, full-width digits and punctuation.
BAICHUAN_SYMBOLS: tuple[str, ...] = (
    "<SEP>", "<CLS>", "\n", "\t",
    "<h2>", "<h2/>", "</h2>", "<br>", "<br/>", "</br>", "<strong>", "<strong/>", "</strong>",
    "<h1>", "<h1/>", "</h1>", "<p>", "<p/>", "</p>", "<h5>", "<h5/>", "</h5>", "<h3>", "<h3/>", "</h3>",
    "<table>", "<table/>", "</table>", "<li>", "<li/>", "</li>", "<tr>", "<tr/>", "</tr>",
    "<h4>", "<h4/>", "</h4>", "<tbody>", "<tbody/>", "</tbody>", "<img>", "<img/>", "</img>",
    "<b>", "<b/>", "</b>", "<td>", "<td/>", "</td>",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
    "０", "１", "２", "３", "４", "５", "６", "７", "８", "９",
    "，", "。", "！", "？", "、", "：", "￥", ".", "!", "?", "《", "》", "【", "】", "『", "』",
    "```", "<!--", "-->", "---", "<!DOCTYPE>",
)
BAICHUAN_RESERVED = 300  # <reserved_0> .. <reserved_299>


def reserved_symbols(n: int) -> list[str]:
    return [f"<reserved_{i}>" for i in range(n)]


def _arg(default: Any, help: str, **meta: Any) -> Any:
    """A field with its ``baichuan train-tokenizer`` flag's metadata (baichuan.cli_fields)."""
    return field(default=default, metadata={"help": help, **meta})


def symbol_list(text: str) -> list[str]:
    """``A,B,...`` (a flag's value) -> ``["A", "B", ...]``."""
    return [s for s in text.split(",") if s]


@dataclass
class TrainTokenizerConfig:
    """Options of ``baichuan train-tokenizer``; defaults are Baichuan-7B's recipe."""

    inputs: list[str] = field(metadata={
        "flag": "--input", "nargs": "+", "metavar": "PATH",
        "help": "text files (one sentence per line), JSONL, .gz/.zst, directories (recursive, sorted) or globs"})
    model_prefix: str = field(metadata={  # writes PREFIX.model and PREFIX.vocab
        "aliases": ("--output",), "metavar": "PREFIX", "help": "writes PREFIX.model and PREFIX.vocab"})
    vocab_size: int = _arg(64000, "vocabulary size (Baichuan-7B: 64000)")
    model_type: str = "bpe"
    character_coverage: float = _arg(
        1.0, "share of characters covered by pieces (Baichuan-7B: 1.0; lower it for a small vocabulary: "
        "the rest is spelled with byte pieces)")
    byte_fallback: bool = _arg(True, "map unknown characters to <unk>", negate="--no-byte-fallback")
    normalization_rule_name: str = "nmt_nfkc"
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = False
    split_digits: bool = _arg(False, "split numbers into digits (Baichuan-7B: off)")
    split_by_unicode_script: bool = True
    split_by_number: bool = True
    split_by_whitespace: bool = True
    max_sentencepiece_length: int = _arg(10, "longest piece (characters)")
    max_sentence_length: int = _arg(8192, "longer lines (bytes) are skipped")
    input_sentence_size: int = _arg(
        10_000_000, "sample at most this many sentences (lines) uniformly from the inputs, e.g. 2000000 or 500K "
        "(K, M, G: powers of 1024, as tokenize --shard-size; KB, MB, GB: powers of 1000); Baichuan-7B: 10000000",
        type=size_arg)
    shuffle_input_sentence: bool = True
    seed_sentencepiece_size: int = 1_000_000
    num_sub_iterations: int = 2
    train_extremely_large_corpus: bool = True
    user_defined_symbols: list[str] = field(default_factory=lambda: list(BAICHUAN_SYMBOLS) + reserved_symbols(BAICHUAN_RESERVED))
    control_symbols: list[str] = field(default_factory=list, metadata={
        "type": symbol_list, "metavar": "A,B,...", "help": "control symbols"})
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    num_threads: int = _arg(0, "trainer threads; 0 = one per core", show_default="0, one per core")
    seed: int = _arg(0, "seed of sentencepiece's sampling")
    text_field: str = _arg("text", "JSONL field holding the text")  # for JSONL inputs
    hard_vocab_limit: bool = True

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``sentencepiece.SentencePieceTrainer.train``."""
        if len(set(self.user_defined_symbols)) != len(self.user_defined_symbols):
            raise TrainTokenizerError(
                "duplicate user-defined symbols (--user-defined-symbols repeats one, or one of the --symbols preset)"
            )
        return dict(
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            character_coverage=self.character_coverage,
            byte_fallback=self.byte_fallback,
            normalization_rule_name=self.normalization_rule_name,
            add_dummy_prefix=self.add_dummy_prefix,
            remove_extra_whitespaces=self.remove_extra_whitespaces,
            split_digits=self.split_digits,
            split_by_unicode_script=self.split_by_unicode_script,
            split_by_number=self.split_by_number,
            split_by_whitespace=self.split_by_whitespace,
            max_sentencepiece_length=self.max_sentencepiece_length,
            max_sentence_length=self.max_sentence_length,
            input_sentence_size=self.input_sentence_size,
            shuffle_input_sentence=self.shuffle_input_sentence,
            seed_sentencepiece_size=self.seed_sentencepiece_size,
            num_sub_iterations=self.num_sub_iterations,
            train_extremely_large_corpus=self.train_extremely_large_corpus,
            user_defined_symbols=list(self.user_defined_symbols),
            control_symbols=list(self.control_symbols),
            unk_id=self.unk_id,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            num_threads=self.num_threads or (os.cpu_count() or 1),
            hard_vocab_limit=self.hard_vocab_limit,
        )


def discover_files(inputs: Sequence[str], warn: Callable[[str], None] | None = None) -> list[Path]:
    """Files, directories (recursive, sorted, hidden entries skipped) and glob patterns: exactly
    the files ``baichuan tokenize`` reads (its Rust discovery), so our own outputs (earlier
    ``baichuan tokenize`` output folders, token ``.idx``/``.bin`` files) are left out, each
    directory with one warning line given to ``warn``. A missing input is an error naming it."""
    from baichuan import _tokenizer

    files, warnings = _tokenizer.discover_inputs([os.fspath(p) for p in inputs])
    for w in warnings:
        if warn is not None:
            warn(w)
    return [Path(f) for f in files]


def iter_sentences(
    files: Iterable[Path],
    text_field: str = "text",
    max_sentence_length: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """The documents ``baichuan tokenize`` makes of the files, in its order and by its Rust reader
    (``_tokenizer.DocumentReader``: gzip/zstd, universal newlines, JSONL text field, invalid UTF-8
    dropped, stripped), less the empty ones and those longer than ``max_sentence_length`` bytes
    (which sentencepiece's trainer would skip). A file that cannot be read (not gzip, truncated,
    unreadable) raises :class:`TrainTokenizerError` naming it; the reader's warnings (a file that
    looks binary, JSONL lines skipped) go to ``warn``."""
    from baichuan import _tokenizer

    for path in files:
        try:
            reader = _tokenizer.DocumentReader(os.fspath(path), text_field=text_field)
            while docs := reader.read(4096):
                for _, text in docs:
                    if text and (max_sentence_length is None or len(text.encode("utf-8")) <= max_sentence_length):
                        yield text
            warnings = reader.take_warnings()
        except (OSError, _tokenizer.CorpusError) as e:
            reason = str(e).removeprefix(f"{os.fspath(path)}: ")
            raise TrainTokenizerError(f"{path}: cannot read it: {reason}") from None
        if warn is not None:
            for w in warnings:
                warn(w)


@dataclass
class TrainResult:
    model_path: Path
    vocab_path: Path
    vocab_size: int
    sentences: int


def train_tokenizer(cfg: TrainTokenizerConfig, warn: Callable[[str], None] | None = None) -> TrainResult:
    """Trains with sentencepiece and writes ``PREFIX.model`` and ``PREFIX.vocab``. Warnings (our
    own outputs found among the inputs and left out) go to ``warn``, by default to stderr as
    ``baichuan train-tokenizer: warning: ...``."""
    try:
        import sentencepiece as spm
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "train-tokenizer needs the sentencepiece trainer: pip install 'baichuan-stack[train]' (or pip install sentencepiece)"
        ) from e
    if warn is None:
        warn = lambda w: print(f"baichuan train-tokenizer: warning: {w}", file=sys.stderr)  # noqa: E731
    files = discover_files(cfg.inputs, warn)
    if not files:
        raise FileNotFoundError("no input files")
    kwargs = cfg.trainer_kwargs()
    count = 0

    def sentences() -> Iterator[str]:
        nonlocal count
        for s in iter_sentences(files, cfg.text_field, cfg.max_sentence_length, warn):
            count += 1
            yield s

    prefix = Path(cfg.model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(cfg.seed)
    read_error: list[TrainTokenizerError] = []

    def guarded() -> Iterator[str]:
        # sentencepiece may turn an exception raised in the iterator into its own error: keep ours
        try:
            yield from sentences()
        except TrainTokenizerError as e:
            read_error.append(e)
            raise

    try:
        spm.SentencePieceTrainer.train(sentence_iterator=guarded(), model_writer=model, **kwargs)
    except Exception as e:
        if read_error:
            raise read_error[0] from None
        if isinstance(e, TrainTokenizerError):
            raise
        if isinstance(e, RuntimeError | ValueError):
            raise TrainTokenizerError(translate_trainer_error(str(e))) from None
        raise
    if count == 0:
        raise TrainTokenizerError("the inputs hold no non-empty document to train on")
    model_path = Path(f"{prefix}.model")
    vocab_path = Path(f"{prefix}.vocab")
    tmp = Path(f"{model_path}.tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, model_path)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    with open(vocab_path, "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n")
    return TrainResult(model_path, vocab_path, sp.get_piece_size(), count)
