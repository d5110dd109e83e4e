"""Fixtures for the admin API tests: a real server process with its admin port."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from admin.stack import AdminStack, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminStack]:
    """A server (memory store, watching its config directory) with a token.

    Shared by the tests of a module: each uses its own identities and files.
    """
    running = start_stack(tmp_path_factory.mktemp("admin"))
    try:
        yield running
    finally:
        running.server.stop()


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[AdminStack]:
    """A server of the test's own, for tests that need untouched state."""
    running = start_stack(tmp_path)
    try:
        yield running
    finally:
        running.server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the server's log to a failed admin test's report."""
    report: pytest.TestReport = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, AdminStack):
                report.sections.append(("ratelimit-ext log", value.server.describe()))
    return report
