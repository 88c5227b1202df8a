"""Weighted mixtures of shard directories, and the fixed held-out sequences of validation.

Pure numpy (no torch), so everything here is tested without DeepSpeed (``tests/test_mixture.py``).

Sources
    ``--data 0.7:zh_shards/ 0.2:en_shards/ 0.1:code_shards/``: each entry is ``WEIGHT:PATH``
    (weights are positive decimal numbers such as ``0.7``, ``3`` or ``1e-2``, need not sum to 1). One entry, with or
    without a weight, keeps today's meaning (``baichuan.data.open_source``: shards or a text
    directory). A mixture has two or more entries, every one weighted, each a ``baichuan tokenize``
    shard directory, no directory twice. A path whose first component holds a colon is written
    ``./a:b/``. The TrainConfig JSON takes the same strings: ``"data": ["0.7:zh/", "0.3:en/"]``.

Schedule (:class:`MixtureSchedule`)
    The weights become small integers ``u_s`` (exactly, e.g. 0.7/0.2/0.1 -> 7/2/1, when the period
    ``P = sum(u_s)`` stays at most 65536; otherwise rounded to 65536 parts, each at least 1).
    One period lists ``u_s`` slots of every source ``s``, ordered by their ideal times
    ``(k + 1/2) / u_s`` (ties by source order): the Sainte-Lague order, so every prefix holds each
    source within about one sequence of its share. Global sequence ``g`` comes from source
    ``pattern[(g + offset) % P]``, where ``offset`` is drawn from the seed; it is the ``k``-th
    sequence of that source, ``k`` = how often the source occurs before ``g`` (closed form, no
    replay). The source's epoch is ``k // n_s`` (``n_s`` its windows of ``max_length + 1``
    tokens) and its window is entry ``k % n_s`` of a permutation drawn from ``(seed, source,
    epoch)``: no window is read twice before the source is exhausted, then the source starts its
    next epoch in a new order (counted: ``epochs_by_source`` in metrics.jsonl, and a log line).

Ranks and position (:class:`MixtureSource`)
    Micro-batch ``m`` of rank ``r`` of ``W`` reads the global sequences
    ``base + (m * W + r) * micro_batch + j``. All ranks take the same number of micro-batches, so
    the position is one number, the global count of sequences read, the same on every rank. It
    does not depend on ``W``: a checkpoint resumes with any number of ranks and continues the same
    global sequence stream (``base`` = that count).

Validation (:class:`EvalSet`)
    The first ``ceil(eval_tokens / max_length)`` windows of each evaluation source, in stream
    order (for a mixture, split by weight, at least one per source, at most what the source has):
    the same sequences at every evaluation, whatever the seed or the number of ranks.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from baichuan.data import DataError, ShardManifest, ShardSource, check_tokenizer, is_shard_dir

MAX_PERIOD = 1 << 16


# ------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class SourceSpec:
    """One ``--data`` / ``--eval-data`` entry: ``path`` as given (the name in logs and metrics)."""

    path: str
    weight: Fraction | None
    given: str

    @property
    def name(self) -> str:
        return self.path


_WEIGHTED = re.compile(r"^([^:/]+):(.*)$", re.DOTALL)


def _parse_one(item: str, flag: str) -> SourceSpec:
    m = _WEIGHTED.match(item)
    if m is None:
        return SourceSpec(item, None, item)
    w_text, path = m.group(1), m.group(2)
    try:
        weight = Fraction(w_text.strip())
    except (ValueError, ZeroDivisionError):
        raise DataError(
            f"{flag} {item}: weight {w_text!r} is not a number (expected WEIGHT:PATH, e.g. 0.7:{path or 'shards/'}; "
            f"write a path with a colon as ./{item})"
        ) from None
    if weight <= 0:
        raise DataError(f"{flag} {item}: the weight must be > 0, got {w_text}")
    if not path:
        raise DataError(f"{flag} {item}: no path after the weight")
    return SourceSpec(path, weight, item)


def parse_sources(value: Any, flag: str = "--data") -> list[SourceSpec]:
    """``--data`` / ``--eval-data`` as given (a path, or a list of ``[WEIGHT:]PATH`` strings) ->
    the sources; no file is read. Raises :class:`DataError` (a ``ValueError``) naming the entry."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise DataError(f"{flag}: expected a path or a list of WEIGHT:PATH strings, got {value!r}")
    if not items:
        raise DataError(f"{flag}: no data given")
    specs = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{flag}: {item!r} is not a path")
        specs.append(_parse_one(item, flag))
    if len(specs) > 1:
        for s in specs:
            if s.weight is None:
                raise DataError(
                    f"{flag} {s.given}: a mixture needs a weight for every source (WEIGHT:PATH, e.g. 0.5:{s.path})"
                )
        seen: dict[str, str] = {}
        for s in specs:
            key = os.path.normpath(s.path)
            if key in seen:
                raise DataError(f"{flag}: source {s.path} is given twice ({seen[key]} and {s.given})")
            seen[key] = s.given
    return specs


def source_paths(value: Any) -> list[str]:
    """The paths of ``--data`` / ``--eval-data`` (for ``TrainConfig.inputs``); [] if unparsable."""
    try:
        return [s.path for s in parse_sources(value)]
    except DataError:
        return [value] if isinstance(value, str) else []


def describe_specs(specs: Sequence[SourceSpec]) -> str:
    return " ".join(s.given for s in specs)


# ---------------------------------------------------------------------------------- schedule
def integer_weights(weights: Sequence[Fraction], max_period: int = MAX_PERIOD) -> list[int]:
    """Exact small integers in the ratio of ``weights`` when their sum is at most ``max_period``,
    else the weights rounded to ``max_period`` parts (each at least 1)."""
    fr = [Fraction(w) for w in weights]
    if not fr or any(w <= 0 for w in fr):
        raise ValueError(f"weights must be positive, got {weights}")
    lcm = math.lcm(*(w.denominator for w in fr))
    ints = [int(w * lcm) for w in fr]
    g = math.gcd(*ints)
    ints = [i // g for i in ints]
    if sum(ints) <= max_period:
        return ints
    total = sum(fr)
    return [max(1, round(w / total * max_period)) for w in fr]


class MixtureSchedule:
    """Global sequence index -> source; see the module docstring. Deterministic from
    ``(weights, seed)``, independent of ranks."""

    def __init__(self, weights: Sequence[Fraction], seed: int) -> None:
        self.units = np.asarray(integer_weights(weights), dtype=np.int64)
        self.period = int(self.units.sum())
        S = len(self.units)
        src = np.repeat(np.arange(S), self.units)
        k = np.concatenate([np.arange(u) for u in self.units]).astype(np.float64)
        times = (k + 0.5) / self.units[src]  # equal fractions give bit-equal floats: ties are exact
        self.pattern = src[np.lexsort((src, times))].astype(np.int32)
        onehot = np.zeros((self.period, S), dtype=np.int32)
        onehot[np.arange(self.period), self.pattern] = 1
        self._cum = np.zeros((self.period + 1, S), dtype=np.int32)
        np.cumsum(onehot, axis=0, out=self._cum[1:])
        rng = np.random.Generator(np.random.PCG64([seed, 0x6D6978]))
        self.offset = int(rng.integers(self.period))

    @property
    def shares(self) -> np.ndarray:
        return self.units / self.period

    def _prefix(self, n: np.ndarray) -> np.ndarray:
        """Slots of every source among pattern positions [0, n) of the unrolled pattern: (len(n), S)."""
        n = np.asarray(n, dtype=np.int64)
        return (n // self.period)[..., None] * self.units + self._cum[n % self.period]

    def counts(self, g: int) -> np.ndarray:
        """Sequences of every source among global sequences [0, g)."""
        return self._prefix(np.asarray([g + self.offset]))[0] - self._prefix(np.asarray([self.offset]))[0]

    def source_at(self, g: np.ndarray) -> np.ndarray:
        return self.pattern[(np.asarray(g, dtype=np.int64) + self.offset) % self.period]

    def locate(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, k) of global sequences ``g``: the ``k``-th sequence of ``source`` (0-based)."""
        g = np.asarray(g, dtype=np.int64)
        src = self.source_at(g)
        before = self._prefix(g + self.offset) - self._prefix(np.asarray([self.offset]))[0]
        return src, before[np.arange(len(g)), src]


# ----------------------------------------------------------------------------- shard readers
def open_reader(spec: SourceSpec, seq_len: int, flag: str, manifest: ShardManifest | None = None) -> ShardSource:
    """A window reader for one source of a mixture or of validation (shards only)."""
    p = Path(spec.path)
    if not p.exists():
        raise DataError(f"{flag} {spec.given}: {spec.path} not found")
    if manifest is None:
        if not (is_shard_dir(p) or (p.is_dir() and any(p.glob("shard-*.bin")))):
            what = "a directory of text files" if p.is_dir() else "not a directory"
            raise DataError(
                f"{flag} {spec.given}: {spec.path} is {what}; a mixture or validation source must be a "
                "`baichuan tokenize` output directory (tokenize it first)"
            )
        manifest = ShardManifest.load(p)
    total = manifest.total_tokens
    if total == 0:
        raise DataError(f"{flag} {spec.given}: the shards in {spec.path} hold no tokens (empty source)")
    if total < seq_len:
        raise DataError(
            f"{flag} {spec.given}: {total} tokens, fewer than one sequence of max_length+1 = {seq_len} tokens"
        )
    return ShardSource(manifest, seq_len, 1, 0, 1, 0)


def check_same_tokenizer(
    specs: Sequence[SourceSpec], manifests: Sequence[ShardManifest], flag: str,
    expected_sha256: str | None, expected_from: str,
) -> None:
    """Every source's manifest sha256 is the model's (when known) and the same for all sources."""
    for spec, m in zip(specs, manifests):
        if expected_sha256:
            try:
                check_tokenizer(m, expected_sha256, expected_from)
            except DataError as e:
                raise DataError(f"{flag} source {spec.path}: {e}") from None
        elif m.tokenizer_sha256 != manifests[0].tokenizer_sha256:
            raise DataError(
                f"{flag} source {spec.path}: tokenized with a different tokenizer (sha256 "
                f"{m.tokenizer_sha256[:16]}...) than {specs[0].path} (sha256 {manifests[0].tokenizer_sha256[:16]}...); "
                "every source must be tokenized with the model's tokenizer"
            )


def same_directory(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return os.path.normpath(a) == os.path.normpath(b)


def check_distinct(specs: Sequence[SourceSpec], flag: str) -> None:
    """No directory twice (after resolving links and relative paths)."""
    for i, a in enumerate(specs):
        for b in specs[:i]:
            if same_directory(a.path, b.path):
                raise DataError(f"{flag}: {b.path} and {a.path} are the same directory (a source given twice)")


def load_sources(
    specs: Sequence[SourceSpec], seq_len: int, flag: str, *, vocab_size: int | None,
    expected_sha256: str | None, expected_from: str,
) -> list[ShardSource]:
    """Readers for ``specs`` after every check of a mixture (shards, tokens, tokenizer, vocabulary)."""
    check_distinct(specs, flag)
    readers = [open_reader(s, seq_len, flag) for s in specs]
    check_same_tokenizer(specs, [r.manifest for r in readers], flag, expected_sha256, expected_from)
    if vocab_size is not None:
        for s, r in zip(specs, readers):
            if r.manifest.vocab_size > vocab_size:
                raise DataError(
                    f"{flag} source {s.path}: the shards' tokenizer has {r.manifest.vocab_size} tokens, more than "
                    f"the model's vocab_size {vocab_size}"
                )
    return readers


# ------------------------------------------------------------------------------------ source
def _fraction(text: Any) -> Fraction | None:
    try:
        return Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return None


class MixtureSource:
    """A weighted mixture of shard directories (``baichuan.data.BatchSource``); module docstring."""

    def __init__(
        self,
        specs: Sequence[SourceSpec],
        readers: Sequence[ShardSource],
        seq_len: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        state: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        if len(specs) < 2 or any(s.weight is None for s in specs):
            raise ValueError("a mixture needs two or more weighted sources")
        self.specs, self.readers = list(specs), list(readers)
        self.names = [s.name for s in specs]
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.n_windows = np.asarray([r.n_windows for r in readers], dtype=np.int64)
        self.schedule = MixtureSchedule([s.weight for s in specs], seed)  # type: ignore[misc]
        self.base = 0  # global sequences read before this process started
        self.micro_batches = 0  # taken by every rank since then
        self._perms: list[dict[int, np.ndarray]] = [{} for _ in specs]
        if state is not None:
            self._load_state(state)

    # -- what the trainer logs
    @property
    def consumed(self) -> int:
        """Global sequences read (all ranks), the same number on every rank between micro-batches."""
        return self.base + self.micro_batches * self.world_size * self.micro_batch

    def sequences_by_source(self, consumed: int | None = None) -> dict[str, int]:
        c = self.schedule.counts(self.consumed if consumed is None else consumed)
        return {n: int(x) for n, x in zip(self.names, c)}

    def tokens_by_source(self) -> dict[str, int]:
        """Target tokens read from each source by all ranks (``max_length`` per sequence)."""
        return {n: c * (self.seq_len - 1) for n, c in self.sequences_by_source().items()}

    def epochs_by_source(self) -> dict[str, int]:
        """Completed epochs of each source (0 while its first pass is running)."""
        c = self.schedule.counts(self.consumed)
        return {n: int(x // w) for n, x, w in zip(self.names, c, self.n_windows)}

    def describe(self) -> str:
        parts = [
            f"{s.path} ({share:.1%}, {r.n_windows} sequences)"
            for s, r, share in zip(self.specs, self.readers, self.schedule.shares)
        ]
        return f"mixture of {len(parts)} shard sources: " + ", ".join(parts) + f"; schedule period {self.schedule.period}"

    # -- reading
    def _permutation(self, s: int, epoch: int) -> np.ndarray:
        cache = self._perms[s]
        perm = cache.get(epoch)
        if perm is None:
            n = int(self.n_windows[s])
            rng = np.random.Generator(np.random.PCG64([self.seed, s, epoch]))
            perm = rng.permutation(n).astype(np.int32 if n < 2**31 else np.int64, copy=False)
            for old in sorted(cache)[:-1]:  # keep at most two epochs (the boundary may straddle them)
                del cache[old]
            cache[epoch] = perm
        return perm

    def locate(self, g: np.ndarray) -> list[tuple[int, int, int]]:
        """(source, epoch of that source, window) of global sequences ``g``."""
        src, k = self.schedule.locate(g)
        out = []
        for s, kk in zip(src.tolist(), k.tolist()):
            n = int(self.n_windows[s])
            epoch, i = divmod(kk, n)
            out.append((s, epoch, int(self._permutation(s, epoch)[i])))
        return out

    def global_indices(self, micro_batches: int) -> np.ndarray:
        first = self.base + (micro_batches * self.world_size + self.rank) * self.micro_batch
        return first + np.arange(self.micro_batch, dtype=np.int64)

    def next_batch(self) -> np.ndarray:
        where = self.locate(self.global_indices(self.micro_batches))
        self.micro_batches += 1
        self.last_sources = [s for s, _, _ in where]
        return np.stack([self.readers[s].window(w) for s, _, w in where])

    # -- position
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "mixture",
            "consumed": self.consumed,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "micro_batch": self.micro_batch,
            "sources": [
                {"path": s.path, "weight": s.given.split(":", 1)[0], "n_windows": int(n),
                 "tokenizer_sha256": r.manifest.tokenizer_sha256}
                for s, n, r in zip(self.specs, self.n_windows, self.readers)
            ],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        mine = describe_specs(self.specs)
        if state.get("kind") != "mixture":
            raise DataError(
                f"cannot resume: the checkpoint read a single data source ({state.get('kind')!r}), this run the "
                f"mixture {mine}; a data position does not carry over between the two"
            )
        theirs = [(x.get("path"), x.get("weight")) for x in state.get("sources", [])]
        if len(theirs) != len(self.specs) or any(
            _fraction(w) != s.weight or not (p == s.path or same_directory(str(p), s.path))
            for (p, w), s in zip(theirs, self.specs)
        ):
            given = " ".join(f"{w}:{p}" for p, w in theirs)
            raise DataError(
                f"cannot resume: the checkpoint's mixture is {given}, this run's is {mine}; a mixture position is "
                "only valid for the same sources and weights, in the same order"
            )
        for x, n in zip(state["sources"], self.n_windows):
            if int(x.get("n_windows", -1)) != int(n):
                raise DataError(
                    f"cannot resume: source {x['path']} now makes {int(n)} sequences of {self.seq_len} tokens, "
                    f"the checkpoint's had {x.get('n_windows')} (its shards or max_length changed)"
                )
        for key, val in (("seq_len", self.seq_len), ("seed", self.seed)):
            if state.get(key) != val:
                raise DataError(
                    f"cannot resume: the checkpoint's data position has {key}={state.get(key)}, this run has {val}"
                )
        # The position is global: any number of ranks continues the same sequence stream.
        self.base, self.micro_batches = int(state["consumed"]), 0

    def close(self) -> None:
        for r in self.readers:
            r.close()


# -------------------------------------------------------------------------------- validation
def apportion(total: int, weights: Sequence[Fraction]) -> list[int]:
    """``total`` split in the ratio of ``weights`` (largest remainders), at least 1 each."""
    w = [Fraction(x) for x in weights]
    s = sum(w)
    quotas = [x / s * total for x in w]
    out = [max(1, math.floor(q)) for q in quotas]
    rest = total - sum(out)
    order = sorted(range(len(w)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
    for i in order[: max(0, rest)]:
        out[i] += 1
    return out


class EvalSet:
    """The fixed held-out sequences (module docstring), read from memory-mapped shards."""

    def __init__(self, specs: Sequence[SourceSpec], readers: Sequence[ShardSource], seq_len: int, eval_tokens: int) -> None:
        self.specs, self.readers = list(specs), list(readers)
        self.names = [s.name for s in specs]
        self.seq_len = seq_len
        self.is_mixture = len(specs) > 1
        wanted = max(1, math.ceil(eval_tokens / (seq_len - 1)))
        weights = [s.weight if s.weight is not None else Fraction(1) for s in specs]
        alloc = apportion(wanted, weights) if self.is_mixture else [wanted]
        self.short = [(s.path, a, r.n_windows) for s, a, r in zip(specs, alloc, readers) if a > r.n_windows]
        self.windows = [np.arange(min(a, r.n_windows), dtype=np.int64) for a, r in zip(alloc, readers)]

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows) * (self.seq_len - 1)

    def describe(self) -> str:
        parts = [f"{n}: {len(w)}" for n, w in zip(self.names, self.windows)]
        return f"{sum(len(w) for w in self.windows)} held-out sequences of {self.seq_len} tokens ({', '.join(parts)})"

    def rank_windows(self, s: int, rank: int, world_size: int) -> np.ndarray:
        """Source ``s``'s windows evaluated by ``rank``: entries ``rank, rank + W, ...``."""
        return self.windows[s][rank::world_size]

    def batches(self, s: int, rank: int, world_size: int, micro_batch: int):
        """Yields ``(tokens (micro_batch, seq_len) int64, valid rows)``; every rank yields the same
        number of batches (ZeRO-3 gathers parameters in every forward), the missing rows are
        copies of the source's first window and count for nothing."""
        ids = self.windows[s]
        mine = ids[rank::world_size]
        per_rank = -(-len(ids) // world_size)
        for b in range(-(-per_rank // micro_batch)):
            chunk = mine[b * micro_batch : (b + 1) * micro_batch]
            fill = np.concatenate([chunk, np.full(micro_batch - len(chunk), ids[0], dtype=np.int64)])
            yield np.stack([self.readers[s].window(int(w)) for w in fill]), len(chunk)

    def close(self) -> None:
        for r in self.readers:
            r.close()


# ------------------------------------------------------------------------- for baichuan.train
def first_path(data: Any) -> str:
    """The first source's path of ``--data`` (where the tokenizer's vocabulary is looked up)."""
    return parse_sources(data)[0].path


def open_training_data(
    data: Any,
    *,
    seq_len: int,
    micro_batch: int,
    rank: int,
    world_size: int,
    seed: int,
    vocab_size: int,
    tokenizer_path: str | os.PathLike[str] | None = None,
    expected_tokenizer_sha256: str | None = None,
    expected_from: str = "",
    state: dict[str, Any] | None = None,
    encode_threads: int | None = None,
) -> Any:
    """``--data``'s source: one path as ``baichuan.data.open_source``, or a :class:`MixtureSource`."""
    from baichuan.data import open_source

    specs = parse_sources(data, "--data")
    if len(specs) == 1:
        return open_source(
            specs[0].path, seq_len=seq_len, micro_batch=micro_batch, rank=rank, world_size=world_size, seed=seed,
            vocab_size=vocab_size, tokenizer_path=tokenizer_path, expected_tokenizer_sha256=expected_tokenizer_sha256,
            expected_from=expected_from, state=state, encode_threads=encode_threads,
        )
    readers = load_sources(specs, seq_len, "--data", vocab_size=vocab_size,
                           expected_sha256=expected_tokenizer_sha256, expected_from=expected_from)
    return MixtureSource(specs, readers, seq_len, micro_batch, rank, world_size, seed, state)


def open_eval(
    eval_data: Any, *, seq_len: int, eval_tokens: int, vocab_size: int | None,
    expected_tokenizer_sha256: str | None, expected_from: str,
) -> EvalSet:
    specs = parse_sources(eval_data, "--eval-data")
    readers = load_sources(specs, seq_len, "--eval-data", vocab_size=vocab_size,
                           expected_sha256=expected_tokenizer_sha256, expected_from=expected_from)
    return EvalSet(specs, readers, seq_len, eval_tokens)


def eval_overlap_warnings(data: Any, eval_data: Any) -> list[str]:
    """One warning per evaluation source that is also a training source (not held out)."""
    if eval_data is None:
        return []
    train = parse_sources(data, "--data")
    out = []
    for e in parse_sources(eval_data, "--eval-data"):
        for t in train:
            if same_directory(e.path, t.path):
                out.append(
                    f"baichuan train: warning: --eval-data {e.path} is also a training source ({t.given}); "
                    "its validation loss is not held out"
                )
    return out
