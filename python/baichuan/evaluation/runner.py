"""Evaluation driver: load a benchmark, build prompts, score them, collect per-subject results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from baichuan.evaluation.benchmarks import Benchmark, get_benchmark, resolve_data_dir
from baichuan.evaluation.data import LETTERS, EvalDataError, Question, SubjectData
from baichuan.evaluation.results import EvalResult, PromptItem, SubjectResult
from baichuan.evaluation.scoring import LetterScorer, softmax


@dataclass
class EvalConfig:
    """Everything ``baichuan eval`` takes; one dataclass from the CLI down."""

    task: str
    data_dir: str
    model: str | None = None
    tokenizer: str | None = None
    shot: int = 5
    split: str | None = None  # None: the benchmark's default (C-Eval val, others test)
    subjects: list[str] | None = None
    batch_size: int = 16
    max_length: int = 2048
    output: str | None = None
    show_prompts: bool = False
    add_bos: bool = False
    prefix_cache: bool = True
    device: str | None = None
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    trust_remote_code: bool = False
    backend: str = "auto"  # auto | baichuan | transformers (see backends.load_model)
    limit: int | None = None  # score only the first N questions of each subject (smoke runs)
    progress: bool = True


class Encoder:
    """Prompt text -> ids with the evaluation's BOS rule; counts tokens for shot fitting."""

    def __init__(self, tokenizer: Any, add_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.prefix = [int(tokenizer.bos_id)] if add_bos else []
        self._counts: dict[str, int] = {}

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [self.prefix + list(ids) for ids in self.tokenizer.encode_batch(list(texts))]

    def count(self, text: str) -> int:
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = len(self.prefix) + len(self.tokenizer.encode(text))
        return n


def build_prompts(
    bench: Benchmark, data: SubjectData, shot: int, encoder: Encoder, max_length: int,
    questions: Sequence[Question] | None = None,
) -> list[PromptItem]:
    """Prompts with ``shot`` demonstrations, shots dropped per the benchmark's rule where the
    prompt is longer than ``max_length`` tokens; a prompt still too long with no shots keeps its
    last ``max_length`` tokens."""
    qs = list(data.questions if questions is None else questions)
    pool = data.shots[:shot]
    if shot > len(data.shots):
        raise EvalDataError(
            f"{bench.name}/{data.subject}: {shot} shots asked, the dev pool has {len(data.shots)}"
        )
    texts = [bench.prompt(data.subject, pool, q) for q in qs]
    all_ids = encoder.encode_batch(texts)
    items = []
    for q, text, ids in zip(qs, texts, all_ids):
        shots = list(pool)
        if len(ids) > max_length or bench.budget_rule:
            shots = bench.fit_shots(data.subject, pool, q, len(pool), encoder.count, max_length)
            if len(shots) != len(pool):
                text = bench.prompt(data.subject, shots, q)
                ids = encoder.encode_batch([text])[0]
        if len(ids) > max_length:
            ids = ids[-max_length:]
        items.append(PromptItem(q, text, ids, len(shots), tuple(s.qid for s in shots)))
    return items


def candidate_ids(tokenizer: Any, letters: str) -> list[int]:
    """Upstream: ``tokenizer(letter).input_ids[-1]`` (no special tokens)."""
    return [int(tokenizer.encode(letter)[-1]) for letter in letters]


def score_subject(
    scorer: LetterScorer, items: Sequence[PromptItem], letters: str,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Group by the demonstrations used (one shared prefix each), score, then softmax/argmax per
    question over its own letters, as upstream's MMLU script does."""
    logits = np.zeros((len(items), len(letters)), dtype=np.float32)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.shot_ids, []).append(i)
    for _, idx in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        logits[idx] = scorer.score([items[i].ids for i in idx], on_batch=on_batch)
    probs = np.zeros_like(logits)
    preds = []
    for i, it in enumerate(items):
        n = len(it.question.choices)
        p = softmax(logits[i, :n])
        probs[i, :n] = p
        preds.append(LETTERS[int(np.argmax(p))])
    return logits, probs, preds


def evaluate(
    cfg: EvalConfig, model: Any, tokenizer: Any, model_name: str = "model"
) -> EvalResult:
    """Run one benchmark with an already loaded model and tokenizer."""
    bench = get_benchmark(cfg.task)
    split = cfg.split or bench.default_split
    data_dir = resolve_data_dir(cfg.task, cfg.data_dir)
    try:
        available = bench.subjects(data_dir, split)
    except EvalDataError as e:
        if data_dir != Path(cfg.data_dir) or not str(e).endswith("directory not found"):
            raise
        expected = Path(cfg.data_dir) / bench.data_subdir
        raise EvalDataError(
            f"{cfg.data_dir}: no {cfg.task} data: expected the folder {expected} "
            f"(or --data-dir pointing at the {cfg.task} folder itself, with its {split}/ files)"
        ) from None
    if not available:
        raise EvalDataError(f"{data_dir}: no {cfg.task} {split} files found")
    subjects = available
    if cfg.subjects:
        unknown = [s for s in cfg.subjects if s not in available]
        if unknown:
            raise EvalDataError(
                f"{cfg.task} {split}: unknown subject(s) {', '.join(unknown)}; valid: {', '.join(available)}"
            )
        subjects = list(cfg.subjects)
    encoder = Encoder(tokenizer, cfg.add_bos)

    loaded: list[tuple[SubjectData, list[PromptItem]]] = []
    for subject in subjects:
        data = bench.load(data_dir, subject, split)
        qs = data.questions[: cfg.limit] if cfg.limit else data.questions
        items = build_prompts(bench, data, cfg.shot, encoder, cfg.max_length, qs)
        loaded.append((data, items))
        if cfg.show_prompts and items:
            print(f"----- {cfg.task}/{subject}: prompt of question {items[0].question.qid} "
                  f"({items[0].n_shots} shots, {len(items[0].ids)} tokens)")
            print("(Start>>>)" + items[0].text + "(<<<End)")

    longest = max((len(it.ids) for _, items in loaded for it in items), default=0)
    prefix_cache = cfg.prefix_cache
    model_cfg = getattr(model, "config", None)
    if model_cfg is not None and hasattr(model_cfg, "check_context"):  # our model: refuse prompts past its (RoPE-scaled) window
        model_cfg.check_context(longest, f"the longest {cfg.task} prompt (--max-length {cfg.max_length})")
        # dynamic NTK past the window: a cached prefix would hold keys rotated for a shorter length
        prefix_cache = prefix_cache and not model_cfg.rope_depends_on_length(longest)
    max_letters = max((len(it.question.choices) for _, items in loaded for it in items), default=4)
    letters = LETTERS[:max_letters]
    scorer = LetterScorer(
        model,
        candidate_ids(tokenizer, letters),
        batch_size=cfg.batch_size,
        prefix_cache=prefix_cache,
        pad_id=_pad_id(tokenizer),
    )
    total = sum(len(items) for _, items in loaded)
    bar = _progress(total, f"{cfg.task} {split}", cfg.progress)
    start = time.perf_counter()
    results = []
    for data, items in loaded:
        bar.set_postfix_str(data.subject, refresh=False)
        logits, probs, preds = score_subject(scorer, items, letters, on_batch=bar.update)
        results.append(SubjectResult(data.subject, items, logits, probs, preds))
    bar.close()
    return EvalResult(
        task=cfg.task, split=split, shot=cfg.shot, model_name=model_name, subjects=results,
        seconds=time.perf_counter() - start, stats=scorer.stats,
    )


def _pad_id(tokenizer: Any) -> int:
    """Any valid id works (right padding is never attended to); prefer the tokenizer's pad."""
    pad = getattr(tokenizer, "pad_id", None)
    return int(pad) if isinstance(pad, int) and pad >= 0 else 0


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="q", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def resolve_device_dtype(device: str | None, dtype: str) -> tuple[str, Any]:
    from baichuan.devices import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


def check_tokenizer_fits(model: Any, tokenizer: Any, name: str) -> None:
    """``generate``'s check: a SentencePiece tokenizer must have exactly the model's vocabulary (a
    smaller one scores the wrong ids, a larger one indexes past the embeddings). A transformers
    tokenizer may be smaller than the (padded) embedding table, never larger."""
    from baichuan.generate import VocabularyMismatch, check_vocab

    if isinstance(getattr(tokenizer, "vocab_size", None), int):
        check_vocab(model, tokenizer, name)
        return
    size = getattr(tokenizer, "size", None)
    mv = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int) and isinstance(mv, int) and size > mv:
        raise VocabularyMismatch(
            f"vocabulary mismatch: {name} has {size} tokens but the model's vocab_size is {mv}; "
            "use the tokenizer the model was trained with"
        )


def run(cfg: EvalConfig) -> EvalResult:
    """Load the model named by ``cfg.model`` and evaluate it; write outputs if ``cfg.output``."""
    from baichuan.evaluation.backends import load_model, load_tokenizer
    from baichuan.evaluation.report import write_outputs

    if cfg.model is None:
        raise EvalDataError("--model is required")
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    model = load_model(cfg.model, device=device, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                       backend=cfg.backend)
    check_tokenizer_fits(model, tokenizer, cfg.tokenizer or cfg.model)
    result = evaluate(cfg, model, tokenizer, model_name=Path(cfg.model).name)
    if cfg.output:
        write_outputs(result, Path(cfg.output))
    return result
