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
