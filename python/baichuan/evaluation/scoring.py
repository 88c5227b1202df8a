"""Batched next-token scoring of answer letters with a shared-prefix KV cache.

For a group of prompts that share a few-shot prefix, the prefix is run through the model once
(batch 1, ``use_cache=True``); its cache is then expanded along the batch dimension (a view, no
copy) and every batch of question suffixes is run on top of it. Suffixes are right-padded, so the
causal mask alone keeps padding invisible to real tokens and no attention mask is needed; the
logits are read at each row's last real token.

The shared prefix is the longest common prefix of the *token* sequences of the full prompts, so
the ids fed to the model are exactly those of tokenizing each whole prompt (SentencePiece may merge
across the text boundary between shots and question; the token-level prefix is always exact).

Works with our ``BaichuanForCausalLM`` (``past_key_values`` as per-layer ``(k, v)`` tuples) and
with transformers causal LMs (``Cache`` objects).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from baichuan.evaluation.results import ScoreStats
from baichuan.model import varying_shape_attention


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of all sequences, leaving each at least one token."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        i = 0
        limit = min(n, len(s))
        while i < limit and s[i] == first[i]:
            i += 1
        n = i
        if n <= 0:
            return 0
    return max(n, 0)


class _GatherHead(nn.Module):
    """Wraps an output head so it only projects one position per row."""

    def __init__(self, head: nn.Module, index: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.index = index

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.head(hidden[rows, self.index.to(hidden.device)].unsqueeze(1))


@contextlib.contextmanager
def _gather_last(model: nn.Module, index: torch.Tensor) -> Iterator[bool]:
    """Temporarily make ``model.lm_head`` project only ``index`` per row (saves the B*T*V logits)."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        yield False
        return
    model.lm_head = _GatherHead(head, index)
    try:
        yield True
    finally:
        model.lm_head = head


def _expand_cache(past: Any, batch: int) -> Any:
    """Repeat a batch-1 cache ``batch`` times along dim 0 (views for our tuples)."""
    if isinstance(past, (tuple, list)):
        return type(past)(_expand_cache(p, batch) for p in past)
    if isinstance(past, torch.Tensor):
        return past.expand(batch, *past.shape[1:])
    # transformers Cache: rebuild a fresh DynamicCache each time (forward appends to it in place)
    from transformers import DynamicCache

    layers = getattr(past, "layers", None)
    if layers is not None:
        kv = [(layer.keys, layer.values) for layer in layers]
    else:  # transformers 4.x
        kv = list(zip(past.key_cache, past.value_cache))
    fresh = DynamicCache()
    for i, (k, v) in enumerate(kv):
        fresh.update(k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:]), i)
    return fresh


def _cache_keyword(model: nn.Module) -> str:
    """transformers >= 5.x names the cache argument ``cache``; ours and older ones ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def _cache_of(output: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise ValueError("the model returned no KV cache for use_cache=True")


class LetterScorer:
    """Scores the candidate letters' next-token logits at the end of each prompt."""

    def __init__(
        self,
        model: nn.Module,
        candidate_ids: Sequence[int],
        *,
        batch_size: int = 16,
        prefix_cache: bool = True,
        pad_id: int = 0,
        device: torch.device | str | None = None,
        cudnn_attention: bool = False,
    ) -> None:
        self.model = model
        self.candidate_ids = torch.tensor(list(candidate_ids), dtype=torch.long)
        self.batch_size = max(1, batch_size)
        self.prefix_cache = prefix_cache
        self.pad_id = pad_id
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.cudnn_attention = cudnn_attention
        self.stats = ScoreStats()
        self._cache_kw = _cache_keyword(model)

    @torch.inference_mode()
    def score(
        self, seqs: Sequence[Sequence[int]], on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Candidate-letter logits (float32, shape ``(len(seqs), n_candidates)``) for prompts that
        should share a prefix (one subject with one set of shots)."""
        with varying_shape_attention(self.device, self.cudnn_attention):
            return self._score(seqs, on_batch)

    def _score(self, seqs: Sequence[Sequence[int]], on_batch: Callable[[int], None] | None) -> np.ndarray:
        out = np.zeros((len(seqs), len(self.candidate_ids)), dtype=np.float32)
        if not seqs:
            return out
        if any(len(s) == 0 for s in seqs):
            raise ValueError("empty prompt")
        p = common_prefix_length(seqs) if self.prefix_cache else 0
        past = None
        if p > 0:
            prefix = torch.tensor([list(seqs[0][:p])], dtype=torch.long, device=self.device)
            with _gather_last(self.model, torch.zeros(1, dtype=torch.long)):
                past = _cache_of(self.model(input_ids=prefix, use_cache=True))
            self.stats.prefix_tokens += p
            self.stats.forwards += 1
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            suffixes = [list(seqs[i][p:]) for i in rows]
            width = max(len(s) for s in suffixes)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            for r, s in enumerate(suffixes):
                ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            last = torch.tensor([len(s) - 1 for s in suffixes], dtype=torch.long)
            kwargs: dict[str, Any] = {}
            if past is not None:
                kwargs[self._cache_kw] = _expand_cache(past, len(rows))
                kwargs["use_cache"] = True
            with _gather_last(self.model, last) as gathered:
                logits = self.model(input_ids=ids.to(self.device), **kwargs).logits
            if gathered:
                picked = logits[:, 0, :]
            else:
                picked = logits[torch.arange(len(rows)), last.to(logits.device)]
            cand = picked[:, self.candidate_ids.to(picked.device)].float().cpu().numpy()
            out[rows] = cand
            self.stats.forwards += 1
            self.stats.suffix_tokens += sum(len(s) for s in suffixes)
            self.stats.padded_tokens += len(rows) * width
            if on_batch is not None:
                on_batch(len(rows))
        self.stats.prompts += len(seqs)
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
