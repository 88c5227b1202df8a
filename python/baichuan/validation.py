"""Held-out validation during training: the loss of the fixed sequences of a
:class:`baichuan.mixture.EvalSet`, the same number whatever the number of ranks.

Rank ``r`` of ``W`` evaluates entries ``r, r + W, ...`` of every source's held-out sequences
(``micro_batch`` rows per forward, the model's own loss ``model(x[:, :-1], labels=x,
ce_chunk=N)``, under ``torch.no_grad`` with the model in eval mode, train mode restored after).
Each rank adds ``loss * target tokens`` per source (float64); the sums and token counts are
all-reduced, so the mean is over exactly the same tokens for any ``W``. Every rank runs the same
number of forwards (ZeRO-3 gathers parameters in each): a rank short of sequences pads its last
batch with copies whose labels are ``-100`` (``IGNORE_INDEX``: not counted) or, with nothing left,
runs a batch whose loss it discards.

Returned keys (metrics.jsonl): ``val_loss`` (mean over all held-out tokens; for a mixture the
sources' sequences are split by weight) and, for a mixture, ``val_loss/<source>`` per source,
named by the path as given. Perplexity = ``exp(loss)`` (log line, TensorBoard).
"""

from __future__ import annotations

from typing import Any

from baichuan.mixture import EvalSet


def evaluate(
    engine: Any, eval_set: EvalSet, *, rank: int, world_size: int, micro_batch: int, device: Any, ce_chunk: int,
) -> dict[str, float]:
    """Validation loss of ``eval_set`` (see the module docstring); call it on every rank."""
    import torch

    from baichuan.model import IGNORE_INDEX

    S = len(eval_set.names)
    sums = torch.zeros(2 * S, dtype=torch.float64)
    module = getattr(engine, "module", engine)
    was_training = module.training
    engine.eval()
    try:
        with torch.no_grad():
            for s in range(S):
                for batch, valid in eval_set.batches(s, rank, world_size, micro_batch):
                    x = torch.from_numpy(batch).to(device)
                    labels = x
                    if 0 < valid < len(batch):
                        labels = x.clone()
                        labels[valid:] = IGNORE_INDEX
                    loss = engine(x[:, :-1], labels=labels, ce_chunk=ce_chunk).loss
                    if valid:
                        tokens = valid * (eval_set.seq_len - 1)
                        sums[s] += float(loss.detach().float().item()) * tokens
                        sums[S + s] += tokens
    finally:
        if was_training:
            engine.train()
    if world_size > 1:
        import torch.distributed as dist

        t = sums.to(device)  # NCCL takes device tensors only
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        sums = t.cpu()
    total_loss, total_tokens = float(sums[:S].sum()), float(sums[S:].sum())
    out = {"val_loss": total_loss / total_tokens}
    if eval_set.is_mixture:
        for s, name in enumerate(eval_set.names):
            out[f"val_loss/{name}"] = float(sums[s]) / float(sums[S + s])
    return out
