"""Fixtures shared by several test files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny matmuls: one intra-op thread is faster, and far faster on a shared, busy CPU.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- ../shared in CI
# The byte-identity and evaluation-format tests read real references from ../shared and skip when
# it is absent (a clone elsewhere). In CI it must be there: `.ci/run` sets BAICHUAN_REQUIRE_SHARED=1
# and every such skip becomes a failure, so a missing ../shared cannot pass as green.
REQUIRE_SHARED = "BAICHUAN_REQUIRE_SHARED"


def _is_shared_skip(report: pytest.CollectReport | pytest.TestReport) -> bool:
    import os

    if os.environ.get(REQUIRE_SHARED) != "1" or not report.skipped:
        return False
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return "shared" in reason


def _fail_shared_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if _is_shared_skip(report):
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_SHARED}=1 but a test needing ../shared was skipped: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_shared_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_shared_skip(outcome.get_result())


# ----------------------------------------------------------------------------- /dev/shm hygiene
# DeepSpeed's CPU all-reduce keeps one /dev/shm buffer per rank (deepspeed_allreduce_buffer_*, 66 MiB
# each) and DeepSpeed 0.19.8 never unlinks it, not even on a normal exit; every multi-rank test left
# its buffers, and over a day of runs they filled /dev/shm and later launches hung. The session
# removes the buffers created while it ran (every test process has ended by then). The launcher
# removes its own job's buffers (baichuan.extensions); this catches those of launchers the tests
# SIGKILLed themselves.
def _shm_buffers() -> set[str]:
    from baichuan.extensions import SHM_BUFFER_PREFIX, SHM_DIR

    return {str(p) for p in SHM_DIR.glob(f"{SHM_BUFFER_PREFIX}*")}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_shm_key] = _shm_buffers()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import os

    before = session.config.stash.get(_shm_key, set())
    for path in sorted(_shm_buffers() - before):
        try:
            os.unlink(path)
        except OSError:
            pass


_shm_key = pytest.StashKey[set[str]]()
