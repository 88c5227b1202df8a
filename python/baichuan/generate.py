"""Text generation: greedy or sampled decoding with a KV cache, repetition penalty, streaming.

    from baichuan import Tokenizer
    from baichuan.checkpoint import load_model
    from baichuan.generate import GenerationConfig, generate

    tok = Tokenizer.from_file("tokenizer.model")
    model = load_model("out/model")
    text = generate(model, tok, "登鹳雀楼->王之涣\\n夜雨寄北->", GenerationConfig(), stream=sys.stdout)

Defaults follow the upstream Baichuan-7B example (``max_new_tokens=64, repetition_penalty=1.1``,
greedy). ``temperature > 0`` switches to sampling; ``top_k`` (0 = off) and ``top_p`` (1.0 = off)
then filter the distribution. Logit processing runs in the same order and with the same formulas
as transformers' ``generate``: repetition penalty over prompt + generated ids (negative logits
multiplied, positive divided by the penalty), then temperature, top-k, top-p; so greedy decoding
gives the same tokens as ``AutoModelForCausalLM.generate(..., do_sample=False)`` on an exported
folder (tests/test_hf.py). Decoding stops after ``max_new_tokens`` or at EOS (not included).

The prompt is encoded without BOS, as the upstream tokenizer does (``add_bos_token: false``);
``GenerationConfig.add_bos`` prepends it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from baichuan.errors import BaichuanError

if TYPE_CHECKING:
    import torch

    from baichuan.model import BaichuanForCausalLM


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy; > 0 samples
    top_k: int = 0  # 0 = no top-k filtering
    top_p: float = 1.0  # 1.0 = no nucleus filtering
    repetition_penalty: float = 1.1  # 1.0 = off
    seed: int | None = None
    stop_at_eos: bool = True
    use_cache: bool = True  # False recomputes the whole sequence each step (reference path)
    cudnn_attention: bool = False  # CUDA: let SDPA use cuDNN (it plans anew for every decoding length)
    add_bos: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V); seen (B, N) ids already in the sequence. transformers' formula."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    import torch

    score = torch.gather(logits, 1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    import torch

    kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``p`` (at least one)."""
    if p >= 1.0:
        return logits
    import torch

    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def next_token(
    logits: torch.Tensor, seen: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Pick the next id (B,) from last-position logits (B, V)."""
    import torch

    scores = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    if cfg.temperature == 0.0:
        return scores.argmax(dim=-1)
    scores = scores / cfg.temperature
    scores = filter_top_k(scores, cfg.top_k)
    scores = filter_top_p(scores, cfg.top_p)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate_ids(
    model: BaichuanForCausalLM,
    prompt_ids: Sequence[int],
    cfg: GenerationConfig | None = None,
    eos_id: int | None = None,
) -> Iterator[int]:
    """Yield generated token ids one at a time (EOS is not yielded; generation stops there)."""
    import torch

    from baichuan.model import varying_shape_attention

    cfg = cfg or GenerationConfig()
    cfg.validate()
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token (or set add_bos)")
    vocab = model.config.vocab_size
    bad = [i for i in prompt_ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"prompt ids {bad[:5]} are outside the model vocabulary (size {vocab})")
    # positions past the context window (ModelConfig.context_window: rope_scaling widens it) are refused
    model.config.check_context(
        len(prompt_ids) + cfg.max_new_tokens,
        f"the prompt ({len(prompt_ids)} tokens) plus max_new_tokens ({cfg.max_new_tokens})",
    )
    device = next(model.parameters()).device
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        if cfg.seed is not None:
            generator.manual_seed(cfg.seed)
        else:
            generator.seed()
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            past = None
            step_input = ids
            for _ in range(cfg.max_new_tokens):
                with varying_shape_attention(device, cfg.cudnn_attention):  # not held across the yield
                    if cfg.use_cache:
                        out = model(step_input, past_key_values=past, use_cache=True, logits_to_keep=1)
                        past = out.past_key_values
                    else:
                        out = model(ids, logits_to_keep=1)
                tok = next_token(out.logits[:, -1], ids, cfg, generator)
                t = int(tok.item())
                if cfg.stop_at_eos and eos_id is not None and t == eos_id:
                    return
                yield t
                step_input = tok.view(1, 1)
                ids = torch.cat([ids, step_input], dim=1)
    finally:
        model.train(was_training)


class TextStream:
    """Turns a growing id list into text deltas; holds back an incomplete UTF-8 tail (U+FFFD)."""

    def __init__(self, tokenizer: TokenizerLike, prompt_ids: Sequence[int], write: Callable[[str], object]):
        self._tok = tokenizer
        self._prompt = list(prompt_ids)
        self._base = tokenizer.decode(self._prompt)
        self._ids: list[int] = []
        self._emitted = 0
        self._write = write

    def _text(self) -> str:
        full = self._tok.decode(self._prompt + self._ids)
        if full.startswith(self._base):
            return full[len(self._base) :]
        return self._tok.decode(self._ids)

    def put(self, token: int) -> None:
        self._ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return
        if len(text) > self._emitted:
            self._write(text[self._emitted :])
            self._emitted = len(text)

    def end(self) -> str:
        text = self._text()
        if len(text) > self._emitted:
            self._write(text[self._emitted :])
            self._emitted = len(text)
        return text


class VocabularyMismatch(BaichuanError, ValueError):
    """The tokenizer's vocabulary is not the model's: ids would be wrong or out of range."""


def check_vocab(model: Any, tokenizer: TokenizerLike, tokenizer_name: str = "tokenizer") -> None:
    """Refuse a tokenizer whose vocabulary size differs from the model's ``config.vocab_size``."""
    tv, mv = tokenizer.vocab_size, model.config.vocab_size
    if tv != mv:
        raise VocabularyMismatch(
            f"vocabulary mismatch: {tokenizer_name} has {tv} pieces but the model's vocab_size is {mv}; "
            "use the tokenizer the model was trained with"
        )


def generate(
    model: BaichuanForCausalLM,
    tokenizer: TokenizerLike,
    prompt: str,
    cfg: GenerationConfig | None = None,
    stream: TextIO | None = None,
) -> str:
    """Generate a continuation of ``prompt``; returns it (without the prompt). With ``stream``,
    text is written there (and flushed) as it is produced."""
    cfg = cfg or GenerationConfig()
    check_vocab(model, tokenizer)
    prompt_ids = list(tokenizer.encode(prompt))
    if cfg.add_bos:
        prompt_ids = [tokenizer.bos_id, *prompt_ids]

    def write(s: str) -> None:
        if stream is not None:
            stream.write(s)
            stream.flush()

    ts = TextStream(tokenizer, prompt_ids, write)
    for t in generate_ids(model, prompt_ids, cfg, eos_id=tokenizer.eos_id):
        ts.put(t)
    return ts.end()
