"""A run's metrics: rank 0's log lines, progress bar, ``metrics.jsonl`` and TensorBoard
(:class:`Logger`), the per-step statistics gathered from every rank (:func:`gather_step_stats`,
:func:`step_record`) and the loss curve (:func:`plot_loss_curve`)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from baichuan.checkpoint import write_atomic
from baichuan.train_config import TrainConfig


def gather_step_stats(mean_loss: float, fingerprint: int, device: Any, world_size: int) -> tuple[list[float], list[int]]:
    """Every rank's mean micro-batch loss and data CRC32 of the step (an all_gather on the rank's
    device: NCCL has no CPU tensors, gloo takes either)."""
    import torch
    import torch.distributed as dist

    stats = torch.tensor([mean_loss, float(fingerprint)], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(stats) for _ in range(world_size)]
    dist.all_gather(gathered, stats)
    gathered = [g.cpu() for g in gathered]
    return [float(g[0]) for g in gathered], [int(g[1]) for g in gathered]


def step_record(*, step: int, rank_losses: list[float], rank_crcs: list[int], lr: float, grad_norm: float,
                tokens_per_step: int, dt: float, flops_per_token: float, world_size: int, peak_tflops: float,
                tokens_seen: int, nonfinite_skipped: int) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of an optimizer step (throughput from the step's wall time)."""
    tps = tokens_per_step / dt if dt > 0 else 0.0
    tflops = flops_per_token * tps / world_size / 1e12
    return {
        "step": step,
        "loss": sum(rank_losses) / len(rank_losses),
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": tps,
        "tflops_per_device": tflops,
        "mfu": tflops / peak_tflops,
        "step_time_s": dt,
        "tokens_seen": tokens_seen,
        "nonfinite_skipped": nonfinite_skipped,
        "rank_losses": rank_losses,
        "rank_data_crc32": rank_crcs,
    }


class Logger:
    """Rank-0 output: a tqdm progress bar, log lines, metrics.jsonl and TensorBoard."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, is_main: bool, start_step: int) -> None:
        self.cfg, self.is_main = cfg, is_main
        self.bar = None
        self.writer = None
        self.metrics = None
        if not is_main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        kept = []
        if path.is_file():  # drop lines beyond the resumed step (written after the checkpoint)
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= start_step:
                        kept.append(line)
                except (ValueError, KeyError):
                    continue
        write_atomic(path, "".join(x + "\n" for x in kept))
        self.metrics = open(path, "a", encoding="utf-8")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard" / "train"), purge_step=start_step + 1)
            except ImportError:
                self.info("tensorboard is not installed; TensorBoard logging is off")
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def info(self, msg: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def step(self, r: dict[str, Any]) -> None:
        if not self.is_main:
            return
        assert self.metrics is not None
        self.metrics.write(json.dumps(r) + "\n")
        self.metrics.flush()
        s = r["step"]
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu"):
                v = r[key]
                if isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(f"train/{key}", v, s)
            for name, n in r.get("tokens_by_source", {}).items():
                self.writer.add_scalar(f"data/tokens/{name}", n, s)
            for key, v in r.items():  # val_loss, val_loss/<source>
                if key.startswith("val_loss") and math.isfinite(v):
                    self.writer.add_scalar(key.replace("val_loss", "val/loss", 1), v, s)
                    self.writer.add_scalar(key.replace("val_loss", "val/ppl", 1), _ppl(v), s)
        if self.bar is not None:
            self.bar.update(s - self.bar.n)
            self.bar.set_postfix(
                loss=f"{r['loss']:.4f}", lr=f"{r['lr']:.2e}", tok_s=f"{r['tokens_per_s']:.0f}", mfu=f"{r['mfu']:.1%}",
                refresh=False,
            )
        if s % self.cfg.log_every == 0 or s == self.cfg.steps:
            self.info(
                f"step {s}/{self.cfg.steps} loss {r['loss']:.4f} lr {r['lr']:.3e} grad_norm {r['grad_norm']:.3f} "
                f"tokens/s {r['tokens_per_s']:.0f} TFLOPS {r['tflops_per_device']:.2f} MFU {r['mfu']:.2%}"
            )
        if "val_loss" in r:
            per_source = [(k.split("/", 1)[1], v) for k, v in r.items() if k.startswith("val_loss/")]
            self.info(
                f"step {s}/{self.cfg.steps} validation loss {r['val_loss']:.4f} ppl {_ppl(r['val_loss']):.2f}"
                + ("".join(f"; {name}: loss {v:.4f} ppl {_ppl(v):.2f}" for name, v in per_source))
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def plot_loss_curve(metrics: Path, out: Path) -> Path | None:
    """Training loss against step from ``metrics.jsonl``, with the validation curves (``val_loss``,
    ``val_loss/<source>``) in the same PNG (None when there is nothing to plot)."""
    steps, losses = [], []
    val: dict[str, tuple[list[int], list[float]]] = {}
    if not metrics.is_file():
        return None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]):
            steps.append(r["step"])
            losses.append(r["loss"])
        for key, v in r.items():
            if key.startswith("val_loss") and isinstance(v, (int, float)) and math.isfinite(v):
                xs, ys = val.setdefault(key, ([], []))
                xs.append(r["step"])
                ys.append(v)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=1.2, label="train")
    for key, (xs, ys) in sorted(val.items()):
        label = "validation" if key == "val_loss" else f"validation {key.split('/', 1)[1]}"
        ax.plot(xs, ys, marker="o", ms=3, lw=1.6 if key == "val_loss" else 0.9,
                ls="-" if key == "val_loss" else "--", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{metrics.parent.name}: training" + (" and validation" if val else "") + " loss")
    if val:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
