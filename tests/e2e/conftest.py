"""Fixtures for end-to-end tests: real Envoy -> real ratelimit-ext -> upstream.

One stack (upstream, server, Envoy) is started per test module and per store:
memory, and redis through the session's ``valkey`` server.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import ExitStack

import pytest

from e2e.stack import Edge, open_edge
from harness.server import ServerProcess


@pytest.fixture(
    scope="module",
    params=["memory", pytest.param("redis", marks=pytest.mark.redis)],
)
def edge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """Upstream + ratelimit-ext (memory or redis store) + Envoy, per module."""
    kind: str = request.param
    store = request.getfixturevalue("valkey").url if kind == "redis" else "memory"
    with ExitStack() as stack:
        yield open_edge(stack, kind, store, tmp_path_factory.mktemp(f"edge-{kind}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the server's and Envoy's logs to a failed e2e test's report."""
    report: pytest.TestReport = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if isinstance(value, Edge):
                report.sections.append(("ratelimit-ext and envoy logs", value.logs()))
            elif isinstance(value, ServerProcess):
                report.sections.append(("ratelimit-ext log", value.describe()))

    return report
