"""The loss inside the model: ``BaichuanForCausalLM(input_ids, labels=..., ce_chunk=N)``.

* the chunked LM-head cross entropy (``LMHead`` with ``ce_chunk > 0``) against PyTorch's
  ``F.cross_entropy`` on full fp32 logits: loss and gradients, fp32 and bf16;
* on the model: chunked equals the plain path (loss and every parameter's gradient), for both
  forms of ``labels`` (as long as ``input_ids``, or one column longer as in training), with -100;
* under DeepSpeed ZeRO-3 on 2 CPU ranks (``baichuan train``): the chunked loss stays on and gives
  the plain path's losses and gradient norms at every step, within fp32 tolerance.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from baichuan.config import ModelConfig
from baichuan.model import IGNORE_INDEX, BaichuanForCausalLM, LMHead, next_token_targets


def head_with(w: torch.Tensor) -> LMHead:
    head = LMHead(w.shape[1], w.shape[0]).to(w.dtype)
    with torch.no_grad():
        head.weight.copy_(w)
    return head


# ------------------------------------------------------------------------- the LM head alone
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cross_entropy_matches_pytorch_fp32(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (0.3 * torch.randn(300, 16, generator=g)).requires_grad_()
    t = torch.randint(0, 300, (50,), generator=g)
    t[[3, 17]] = IGNORE_INDEX
    ref = F.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)
    gh, gw = torch.autograd.grad(ref * 1.7, (h, w))
    head = head_with(w.detach())
    h2 = h.detach().clone().requires_grad_()
    got = head(h2, t, ce_chunk=chunk)
    (got * 1.7).backward()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h2.grad, gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head.weight.grad, gw, rtol=1e-5, atol=1e-7)
    plain = head(h.detach(), t)  # ce_chunk=0: the plain path in the same module
    torch.testing.assert_close(plain, ref.detach(), rtol=1e-6, atol=1e-6)


def test_chunked_cross_entropy_bf16_close_to_fp32_reference() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 40, 32, generator=g).bfloat16().requires_grad_()
    w = (0.2 * torch.randn(500, 32, generator=g)).bfloat16()
    t = torch.randint(0, 500, (2, 40), generator=g)
    wr = w.clone().requires_grad_()
    ref = F.cross_entropy((h.float() @ wr.float().t()).reshape(-1, 500), t.reshape(-1))
    gh, gw = torch.autograd.grad(ref, (h, wr))
    head = head_with(w)
    got = head(h, t, ce_chunk=16)
    got.backward()
    assert got.dtype == torch.float32 and h.grad.dtype == torch.bfloat16 and head.weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(h.grad.float(), gh.float(), rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(head.weight.grad.float(), gw.float(), rtol=2e-2, atol=2e-4)


def test_chunked_without_grad_and_with_nothing_to_score() -> None:
    g = torch.Generator().manual_seed(2)
    w = 0.3 * torch.randn(40, 8, generator=g)
    h = torch.randn(3, 5, 8, generator=g)
    t = torch.randint(0, 40, (3, 5), generator=g)
    head = head_with(w)
    with torch.no_grad():
        got = head(h, t, ce_chunk=4)
    torch.testing.assert_close(got, F.cross_entropy((h @ w.t()).reshape(-1, 40), t.reshape(-1)))
    none = torch.full_like(t, IGNORE_INDEX)
    assert float(head(h, none, ce_chunk=4).detach()) == 0.0  # no scored row: 0, not NaN


# ------------------------------------------------------------------------------- on the model
def test_next_token_targets_shift_and_pad() -> None:
    labels = torch.tensor([[5, 6, 7, 8]])
    assert next_token_targets(labels, 4).tolist() == [[6, 7, 8, -100]]
    assert next_token_targets(labels, 3).tolist() == [[6, 7, 8]]
    with pytest.raises(ValueError, match=r"labels must be \(batch, seq\) or \(batch, seq \+ 1\)"):
        next_token_targets(labels, 2)


@pytest.mark.parametrize("extra_column", [False, True])
def test_model_chunked_loss_equals_plain_loss_and_gradients(extra_column: bool) -> None:
    torch.manual_seed(0)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", vocab_size=1000))
    x = torch.randint(0, 1000, (2, 33))
    labels = x.clone()
    labels[0, 5:9] = IGNORE_INDEX
    ids = x[:, :-1] if extra_column else x
    params = list(model.parameters())
    plain = model(ids, labels=labels)
    assert plain.logits is not None and plain.logits.shape == (*ids.shape, 1000)
    gp = torch.autograd.grad(plain.loss, params)
    chunked = model(ids, labels=labels, ce_chunk=10)
    assert chunked.logits is None  # the whole point: never all the logits
    gc = torch.autograd.grad(chunked.loss, params)
    torch.testing.assert_close(chunked.loss, plain.loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(gc, gp):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the convention spelled out: position t scored against labels[:, t + 1], -100 left out
    logits = plain.logits.detach()
    n = labels.shape[1] - 1
    want = F.cross_entropy(logits[:, :n].reshape(-1, 1000), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(plain.loss.detach(), want, rtol=1e-6, atol=1e-6)


def test_training_form_scores_every_input_position() -> None:
    """``model(x[:, :-1], labels=x)`` (training) == the full sequence with ``labels=x`` (HF form)."""
    torch.manual_seed(1)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", vocab_size=500)).eval()
    x = torch.randint(0, 500, (2, 17))
    with torch.no_grad():
        train_form = model(x[:, :-1], labels=x, ce_chunk=8).loss
        hf_form = model(x, labels=x).loss
    torch.testing.assert_close(train_form, hf_form, rtol=1e-5, atol=1e-6)


def test_bad_loss_arguments() -> None:
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", vocab_size=100))
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="ce_chunk must be >= 0"):
        model(ids, labels=ids, ce_chunk=-1)
    with pytest.raises(ValueError, match="labels cannot be combined with logits_to_keep"):
        model(ids, labels=ids, logits_to_keep=1)
    with pytest.raises(ValueError, match="labels must be"):
        model(ids, labels=torch.tensor([[1, 2, 3, 4, 5]]))
    with pytest.raises(ValueError, match="labels have batch 2"):
        model(ids, labels=torch.ones(2, 3, dtype=torch.long))


# ------------------------------------------------------------------ ZeRO-3, 2 CPU ranks (slow)
def test_zero3_two_ranks_chunked_loss_equals_plain(tmp_path) -> None:
    """``baichuan train --zero-stage 3`` on 2 gloo ranks, fp32, a few steps, ``--chunked-ce 8``
    against ``--chunked-ce 0``: the same losses (every rank) and gradient norms at every step."""
    pytest.importorskip("deepspeed")
    from test_data import MMLU, make_text_dir, tokenize_with_cli
    from test_train_deepspeed import SPM, metrics, run

    if not SPM.is_file() or not MMLU.is_dir():
        pytest.skip("../shared reference data not found")
    shards = tokenize_with_cli(make_text_dir(tmp_path / "text", n_files=2, lines=60), tmp_path / "shards")
    got = {}
    for chunk in (0, 8):
        out = tmp_path / f"ce{chunk}"
        r = run([
            sys.executable, "-m", "baichuan", "train", "--num-procs", "2", "--zero-stage", "3",
            "--data", str(shards), "--tokenizer", str(SPM), "--output-dir", str(out), "--model", "tiny",
            "--max-length", "32", "--micro-batch-size", "2", "--steps", "3", "--lr", "5e-3",
            "--warmup-steps", "1", "--precision", "fp32", "--seed", "5", "--save-every", "0",
            "--chunked-ce", str(chunk), "--no-progress",
        ])
        assert r.returncode == 0, r.stderr[-3000:]
        assert "ZeRO-3" in r.stderr and "2 rank(s)" in r.stderr
        got[chunk] = metrics(out)
    plain, chunked = got[0], got[8]
    assert sorted(plain) == sorted(chunked) == [1, 2, 3]
    for s in (1, 2, 3):
        p, c = plain[s], chunked[s]
        print(f"step {s}: plain {p['rank_losses']} grad_norm {p['grad_norm']}; "
              f"chunked {c['rank_losses']} grad_norm {c['grad_norm']}")
        assert p["rank_data_crc32"] == c["rank_data_crc32"]  # the same batches
        for a, b in zip(c["rank_losses"], p["rank_losses"]):
            assert abs(a - b) <= 1e-5 * abs(b), (s, a, b)
        assert abs(c["grad_norm"] - p["grad_norm"]) <= 1e-4 * abs(p["grad_norm"]), s
    assert plain[3]["loss"] < plain[1]["loss"]  # it trained (so step 2-3 losses also check gradients)
