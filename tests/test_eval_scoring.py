"""Acceptance 2: batched + prefix-cached scoring gives the same predictions and probabilities as
one question at a time with full forwards (upstream's loop), on tiny random models on CPU: our
BaichuanForCausalLM and a transformers LlamaForCausalLM (its Cache API)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baichuan import Tokenizer
from baichuan.config import ModelConfig
from baichuan.evaluation.benchmarks import get_benchmark, resolve_data_dir
from baichuan.evaluation.runner import Encoder, build_prompts, candidate_ids, score_subject
from baichuan.evaluation.scoring import LetterScorer, common_prefix_length
from baichuan.model import BaichuanForCausalLM
from helpers import BAICHUAN_SPM as SPM
from helpers import EVAL_DATA as DATA
from helpers import need_shared_mark

pytestmark = [need_shared_mark(DATA, SPM), pytest.mark.usefixtures("one_torch_thread")]

# (task, subject, split, questions, max_length): small max_length values force shot dropping, so
# one subject has several prefix groups (and CMMLU's/AGIEval's own rules run).
CASES = [
    ("ceval", "computer_network", "val", 12, 2048),
    ("ceval", "high_school_physics", "val", 7, 2048),
    ("mmlu", "abstract_algebra", "test", 10, 2048),
    ("mmlu", "high_school_european_history", "test", 6, 2300),
    ("cmmlu", "agronomy", "test", 9, 2048),
    ("cmmlu", "chinese_history", "test", 6, 330),
    ("agieval", "logiqa-zh", "test", 6, 2048),
    ("agieval", "sat-math", "test", 6, 2048),
    ("gaokao", "history", "test", 6, 2048),
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(SPM)


@pytest.fixture(scope="module")
def model() -> BaichuanForCausalLM:
    torch.manual_seed(0)
    m = BaichuanForCausalLM(ModelConfig.preset("tiny", max_position_embeddings=4096))
    with torch.no_grad():  # bigger logits than the default init, so letter probabilities differ clearly
        m.lm_head.weight.mul_(40.0)
    return m.eval()


def reference(model: torch.nn.Module, ids_list: list[list[int]], cand: list[int], n: int) -> np.ndarray:
    """Upstream's loop: one full forward per question, softmax over the letters' last-position logits."""
    out = []
    with torch.no_grad():
        for ids in ids_list:
            # the full sequence in one forward; only the last position's logits are needed
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
            out.append(torch.softmax(logits[cand[:n]].float(), dim=0).numpy())
    return np.stack(out)


@pytest.mark.parametrize(("task", "subject", "split", "n", "max_length"), CASES)
def test_batched_prefix_cached_equals_one_at_a_time(
    model: BaichuanForCausalLM, tokenizer: Tokenizer, task: str, subject: str, split: str, n: int,
    max_length: int,
) -> None:
    bench = get_benchmark(task)
    data = bench.load(resolve_data_dir(task, DATA), subject, split)
    items = build_prompts(bench, data, 5, Encoder(tokenizer, add_bos=False), max_length, data.questions[:n])
    letters = "ABCDE"[: max(len(it.question.choices) for it in items)]
    cand = candidate_ids(tokenizer, letters)
    scorer = LetterScorer(model, cand, batch_size=4, prefix_cache=True)
    _, probs, preds = score_subject(scorer, items, letters)
    assert scorer.stats.prefix_tokens > 0  # the cache was used
    ref = reference(model, [it.ids for it in items], cand, len(letters))
    np.testing.assert_allclose(probs[:, : len(letters)], ref, atol=2e-5, rtol=1e-4)
    assert preds == ["ABCDE"[int(i)] for i in ref.argmax(axis=1)]
    # the probabilities are not trivially uniform
    assert float(np.abs(ref - 1 / len(letters)).max()) > 0.05
    if max_length < 2048 and task != "agieval":
        assert len({it.n_shots for it in items}) >= 1 and all(len(it.ids) <= max_length for it in items)


def test_shot_dropping_makes_several_groups(tokenizer: Tokenizer) -> None:
    bench = get_benchmark("mmlu")
    data = bench.load(resolve_data_dir("mmlu", DATA), "high_school_european_history", "test")
    items = build_prompts(bench, data, 5, Encoder(tokenizer, False), 2300, data.questions[:30])
    assert len({it.n_shots for it in items}) >= 2
    for it in items:  # upstream's rule: the most shots that fit
        assert len(it.ids) <= 2300
        if it.n_shots < 5:
            longer = bench.prompt(data.subject, data.shots[: it.n_shots + 1], it.question)
            assert len(tokenizer.encode(longer)) > 2300


def test_common_prefix_is_token_exact(tokenizer: Tokenizer) -> None:
    # a text prefix need not be a token prefix: the scorer uses the tokens' common prefix
    seqs = [tokenizer.encode("答案：" + s) for s in ["A是对的", "AB", "好的"]]
    p = common_prefix_length(seqs)
    assert all(s[:p] == seqs[0][:p] for s in seqs)
    assert p < min(len(s) for s in seqs)
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each keeps one token to score


def test_transformers_llama_cache_path(tokenizer: Tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
    )
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        hf.lm_head.weight.mul_(40.0)
    bench = get_benchmark("ceval")
    data = bench.load(resolve_data_dir("ceval", DATA), "law", "val")
    items = build_prompts(bench, data, 5, Encoder(tokenizer, False), 2048, data.questions[:9])
    cand = candidate_ids(tokenizer, "ABCD")
    scorer = LetterScorer(hf, cand, batch_size=4, prefix_cache=True)
    _, probs, preds = score_subject(scorer, items, "ABCD")
    assert scorer.stats.prefix_tokens > 0
    ref = reference(hf, [it.ids for it in items], cand, 4)
    np.testing.assert_allclose(probs, ref, atol=2e-5, rtol=1e-4)
    assert preds == ["ABCD"[int(i)] for i in ref.argmax(axis=1)]


def test_bos_is_part_of_the_shared_prefix(model: BaichuanForCausalLM, tokenizer: Tokenizer) -> None:
    bench = get_benchmark("mmlu")
    data = bench.load(resolve_data_dir("mmlu", DATA), "anatomy", "test")
    items = build_prompts(bench, data, 5, Encoder(tokenizer, add_bos=True), 2048, data.questions[:6])
    assert all(it.ids[0] == tokenizer.bos_id and it.ids[1:] == tokenizer.encode(it.text) for it in items)
    cand = candidate_ids(tokenizer, "ABCD")
    _, probs, preds = score_subject(LetterScorer(model, cand, batch_size=4), items, "ABCD")
    ref = reference(model, [it.ids for it in items], cand, 4)
    np.testing.assert_allclose(probs, ref, atol=2e-5, rtol=1e-4)


def test_deterministic(model: BaichuanForCausalLM, tokenizer: Tokenizer) -> None:
    bench = get_benchmark("ceval")
    data = bench.load(resolve_data_dir("ceval", DATA), "logic", "val")
    items = build_prompts(bench, data, 5, Encoder(tokenizer, False), 2048, data.questions[:8])
    cand = candidate_ids(tokenizer, "ABCD")
    a = score_subject(LetterScorer(model, cand, batch_size=3), items, "ABCD")
    b = score_subject(LetterScorer(model, cand, batch_size=8), items, "ABCD")
    np.testing.assert_allclose(a[1], b[1], atol=2e-5)
    assert a[2] == b[2]


def test_cmmlu_shot_rule_matches_gen_prompt(tokenizer: Tokenizer) -> None:
    """CMMLU's gen_prompt with a tokenizer: while the shots' token total is >= max_length minus the
    header's and question's tokens, remove every shot of the longest length (any position)."""
    bench = get_benchmark("cmmlu")
    data = bench.load(resolve_data_dir("cmmlu", DATA), "chinese_history", "test")
    max_length = 330
    items = build_prompts(bench, data, 5, Encoder(tokenizer, False), max_length, data.questions[:40])
    head = bench.header("chinese_history")
    dropped_inside = 0
    for it in items:
        end = bench.query(it.question, 0)
        fixed = len(tokenizer.encode(head) + tokenizer.encode(end))
        shots = [(bench.shot(s, 0), len(tokenizer.encode(bench.shot(s, 0)))) for s in data.shots[:5]]
        while shots and sum(n for _, n in shots) >= max_length - fixed:
            longest = max(n for _, n in shots)
            shots = [(t, n) for t, n in shots if n != longest]
        assert it.text == head + "".join(t for t, _ in shots) + end
        kept = [s.qid for s in data.shots[:5] if bench.shot(s, 0) in {t for t, _ in shots}]
        dropped_inside += kept != [s.qid for s in data.shots[: len(kept)]]
    assert dropped_inside > 0  # the rule drops shots from the middle too: prefix groups by shot set
