"""Fixtures for the observability tests: in-process sidecars with a metrics
port and, when asked, spans kept in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from harness.envoy import EnvoyProcess
from harness.ports import LOOPBACK, free_port
from harness.server import ServerProcess
from observability.support import Obs, StartObs, write_policy
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.server import ServeSettings, Sidecar
from ratelimit_ext.telemetry import TelemetrySetup


@pytest.fixture
async def start_obs(tmp_path: Path) -> AsyncIterator[StartObs]:
    """Start sidecars: ``tracing=True`` keeps spans in memory; other keyword
    arguments go to ``ServeSettings``."""
    started: list[Obs] = []

    async def start(*, tracing: bool = False, **overrides: object) -> Obs:
        port = free_port()
        options: dict[str, object] = {
            "config": write_policy(tmp_path / f"config-{len(started)}"),
            "listen": f"{LOOPBACK}:0",
            "metrics_listen": f"{LOOPBACK}:{port}",
            "grace_seconds": 1.0,
            "watch": False,
            "admin": AdminSettings(listen=None),
        }
        settings = ServeSettings(**{**options, **overrides})  # type: ignore[arg-type]
        spans = InMemorySpanExporter() if tracing else None
        sidecar = Sidecar(settings, telemetry=TelemetrySetup(span_exporter=spans))
        await sidecar.start()
        channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{sidecar.port}")
        obs = Obs(
            sidecar,
            channel,
            rls_pb2_grpc.RateLimitServiceStub(channel),
            external_auth_pb2_grpc.AuthorizationStub(channel),
            port,
            spans,
        )
        started.append(obs)
        return obs

    yield start
    for obs in started:
        await obs.channel.close()
        await obs.sidecar.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the processes a failed test used to its report."""
    report: pytest.TestReport = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            parts = [getattr(value, name, None) for name in ("server", "envoy")]
            for part in (value, *parts):
                if isinstance(part, ServerProcess | EnvoyProcess):
                    report.sections.append((type(part).__name__, part.describe()))
    return report
