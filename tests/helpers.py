"""What several test files share: where the references in ../shared are, process-tree killing,
a tiny model with non-trivial norms, resuming a batch source and comparing. Plain functions, no
fixtures (those are in conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPM_MODELS = SHARED / "spm-models"
BAICHUAN_SPM = SPM_MODELS / "baichuan-7b.model"  # vocabulary 64000
LLAMA2_SPM = SPM_MODELS / "llama2.model"  # vocabulary 32000
EVAL_DATA = SHARED / "eval-data"
MMLU = EVAL_DATA / "mmlu" / "test"


def kill_tree(p: subprocess.Popen[Any]) -> None:
    """SIGKILL a command started with ``start_new_session=True``, its DeepSpeed launchers and
    ranks (the ranks may have left the session: they are killed by the tree taken first)."""
    import psutil

    try:
        tree = psutil.Process(p.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in tree:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    p.wait()


def tiny_model(seed: int) -> Any:
    """``ModelConfig.preset("tiny")`` in eval mode, norms drawn from [0.5, 1.5] instead of ones
    (so a key-map error that swaps or drops a norm changes the logits)."""
    import torch

    from baichuan.config import ModelConfig
    from baichuan.model import BaichuanForCausalLM

    torch.manual_seed(seed)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def check_resume_equal(make: Callable[[dict[str, Any] | None], Any], stops: tuple[int, ...], total: int) -> None:
    """``make(state)`` opens a batch source (``state=None``: from the start). Reads ``total``
    batches once; then for each k in ``stops``: reads k batches, saves the state through JSON,
    opens a new source from it and checks batches k..total-1 equal the first run's."""
    import numpy as np

    ref = make(None)
    try:
        batches = [ref.next_batch() for _ in range(total)]
    finally:
        ref.close()
    for k in stops:
        src = make(None)
        try:
            for _ in range(k):
                src.next_batch()
            state = json.loads(json.dumps(src.state_dict()))
        finally:
            src.close()
        resumed = make(state)
        try:
            for j in range(k, total):
                np.testing.assert_array_equal(resumed.next_batch(), batches[j], err_msg=f"resume after {k}, batch {j}")
        finally:
            resumed.close()


def _missing(paths: tuple[Path, ...]) -> list[str]:
    return [str(p) for p in paths if not p.exists()]


def need_shared_mark(*paths: Path) -> Any:
    """A ``skipif`` mark for tests that read these ../shared references (conftest turns the skip
    into a failure under BAICHUAN_REQUIRE_SHARED=1)."""
    import pytest

    missing = _missing(paths)
    return pytest.mark.skipif(bool(missing), reason=f"../shared is absent: {', '.join(missing)}")


def skip_module_without_shared(*paths: Path) -> None:
    """Skip the calling test module when a ../shared reference is missing."""
    import pytest

    missing = _missing(paths)
    if missing:
        pytest.skip(f"../shared is absent: {', '.join(missing)}", allow_module_level=True)
