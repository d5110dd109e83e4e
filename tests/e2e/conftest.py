"""Fixtures for end-to-end tests: real Envoy -> real ratelimit-ext -> upstream.

One stack (upstream, server, Envoy) is started per test module and per store:
memory, and redis through the session's ``valkey`` server.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import ExitStack

import httpx
import pytest

from e2e.stack import DOMAIN, Edge, make_callers, write_config
from harness.envoy import EnvoyProcess, edge_bootstrap
from harness.server import ServerProcess
from harness.upstream import EchoUpstream


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
    workdir = tmp_path_factory.mktemp(f"edge-{kind}")
    callers = make_callers()
    config = write_config(workdir / "config", callers)

    with ExitStack() as stack:
        upstream = stack.enter_context(EchoUpstream())
        # Envoy here waits up to 1 s; so may the store, on a CI machine whose two
        # cores also run Envoy, Valkey and the test itself.
        server = stack.enter_context(
            ServerProcess(
                config, workdir, store=store, extra_args=("--store-timeout", "0.5")
            )
        )
        bootstrap = edge_bootstrap(
            server_port=server.port, upstream_port=upstream.port, domain=DOMAIN
        )
        envoy = stack.enter_context(EnvoyProcess(bootstrap, workdir))
        client = stack.enter_context(
            httpx.Client(base_url=envoy.http_url, trust_env=False, timeout=10.0)
        )
        yield Edge(kind, server, envoy, upstream, client, callers)


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
