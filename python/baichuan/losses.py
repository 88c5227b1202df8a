"""Language-model losses for training.

:func:`chunked_cross_entropy` is the LM head and the cross entropy in one autograd function that
never holds fp32 logits for all tokens at once: it walks the tokens in chunks of ``chunk_size``
rows, computes that chunk's logits ``h @ W.T`` in the hidden states' dtype, upcasts only that
chunk to fp32 for log-sum-exp, and computes the chunk's gradients (``softmax - onehot``) right
away, so the backward pass is a scale of stored gradients and the logits are never recomputed.

Peak extra memory is one chunk of fp32 logits (``chunk_size x vocab x 4`` bytes, 256 MiB for 1024
x 64000) plus an fp32 accumulator for the weight gradient (``vocab x hidden x 4`` bytes) when the
weight is not fp32, against ``tokens x vocab x (2 + 4 + 4)`` bytes for bf16 logits, their fp32 copy
and its gradient in the plain path (2.6 GB for micro-batch 2 x 4096 tokens x 64000).

The result equals ``F.cross_entropy((h @ W.T).float(), targets)`` up to float rounding
(``tests/test_train.py::test_chunked_cross_entropy_*``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_size: int,
        ignore_index: int,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        valid_all = targets != ignore_index
        n_valid = int(valid_all.sum().item())
        denom = max(n_valid, 1)
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h = hidden[start:end]
            t = targets[start:end]
            valid = valid_all[start:end]
            logits = (h @ weight.t()).float()  # (c, V) fp32: one chunk only
            lse = torch.logsumexp(logits, dim=-1)
            safe_t = torch.where(valid, t, torch.zeros_like(t))
            target_logit = logits.gather(1, safe_t.unsqueeze(1)).squeeze(1)
            total += ((lse - target_logit) * valid).sum()
            if need_h or need_w:
                # d(sum of losses)/d logits = softmax - onehot, on valid rows; / n_valid for the mean.
                probs = logits.sub_(lse.unsqueeze(1)).exp_()
                probs[torch.arange(end - start, device=probs.device), safe_t] -= 1.0
                probs.mul_((valid.to(probs.dtype) / denom).unsqueeze(1))
                g = probs.to(hidden.dtype)
                del probs, logits
                if need_h:
                    assert grad_h is not None
                    torch.matmul(g, weight, out=grad_h[start:end])
                if need_w:
                    assert grad_w is not None
                    grad_w += (g.t() @ h).float()
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.weight_dtype = weight.dtype
        return total / denom

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) if ctx.needs_input_grad[0] else None
        grad_w = saved.pop(0) if ctx.needs_input_grad[1] else None
        if grad_h is not None:
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_out.float()).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross entropy of ``hidden @ weight.T`` against ``targets``, in chunks of rows.

    ``hidden``: (..., H), ``weight``: (V, H) (the LM head), ``targets``: (...) class ids, with
    ``ignore_index`` rows left out of the mean.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).to(h.device)
    if h.shape[0] != t.shape[0]:
        raise ValueError(f"{h.shape[0]} hidden rows but {t.shape[0]} targets")
    return _ChunkedLinearCrossEntropy.apply(h, weight, t, chunk_size, ignore_index)


def plain_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference path: fp32 logits for every token, then ``F.cross_entropy``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class FinalHiddenCapture:
    """Keeps the output of the model's final norm (the hidden states the LM head reads).

    Installed once per model (:func:`lm_loss` does it): a hook that stays the same object keeps
    ``torch.compile`` from recompiling on every call, which a fresh hook per call would cause.
    """

    ATTR = "_baichuan_final_hidden_capture"

    def __init__(self, core: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None  # no counters here: an int would make torch.compile recompile
        self.handle = core.model.norm.register_forward_hook(self._hook)

    def _hook(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self.value = output

    @classmethod
    def of(cls, core: torch.nn.Module) -> FinalHiddenCapture:
        capture = core.__dict__.get(cls.ATTR)
        if capture is None:
            capture = cls(core)
            core.__dict__[cls.ATTR] = capture  # not a submodule/parameter: invisible to state_dict
        return capture

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("the model's final norm did not run")
        return value


def lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Next-token loss of ``model`` (a :class:`baichuan.model.BaichuanForCausalLM`, possibly wrapped
    by DeepSpeed).

    ``chunk_size > 0`` uses :func:`chunked_cross_entropy` on the final (normed) hidden states,
    captured by a forward hook on ``model.model.norm`` while the model itself computes logits for
    the last position only (``logits_to_keep=1``); ``chunk_size == 0`` is the plain path.
    """
    if chunk_size <= 0:
        return plain_cross_entropy(model(input_ids).logits, targets)
    core = getattr(model, "module", model)
    capture = FinalHiddenCapture.of(core)
    capture.value = None
    model(input_ids, logits_to_keep=1)
    return chunked_cross_entropy(capture.take(), core.lm_head.weight, targets, chunk_size)
