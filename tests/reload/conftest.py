"""Fixtures for the hot-reload tests: in-process sidecars watching a path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from harness.ports import LOOPBACK, free_port
from ratelimit_ext.server import ServeSettings, Sidecar
from reload.live import Live, StartLive


@pytest.fixture
async def start_live() -> AsyncIterator[StartLive]:
    """Start in-process sidecars watching a path; all stopped at teardown."""
    started: list[Live] = []

    async def start(config: Path) -> Live:
        settings = ServeSettings(
            config=config,
            listen=f"{LOOPBACK}:{free_port()}",
            metrics_listen=None,
            grace_seconds=1.0,
        )
        sidecar = Sidecar(settings)
        await sidecar.start()
        channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{sidecar.port}")
        live = Live(sidecar, channel, rls_pb2_grpc.RateLimitServiceStub(channel))
        started.append(live)
        return live

    yield start
    for live in started:
        await live.channel.close()
        await live.sidecar.stop()
