"""An in-process sidecar on a free port, and gRPC stubs to call it."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from harness.inprocess import Running
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.server import ServeSettings, Sidecar

POLICY = """
domain: api
tiers:
  - name: free
    limits: [{unit: minute, requests_per_unit: 2}]
  - name: pro
    limits: [{unit: minute, requests_per_unit: 5}, {unit: hour, requests_per_unit: 50}]
descriptors:
  - key: generic_key
    value: three
    rate_limit: {unit: minute, requests_per_unit: 3, name: three}
  - key: generic_key
    value: hourly
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: generic_key
    value: free
    rate_limit: {unlimited: true}
  - key: user_id
    rate_limit: {from_tier: true}
"""

KEYS = f"""
api_keys:
  - sha256: {hash_key("key-free")}
    identity: alice
    tier: free
  - sha256: {hash_key("key-pro")}
    identity: bob
    tier: pro
  - sha256: {hash_key("key-disabled")}
    identity: mallory
    tier: pro
    disabled: true
"""


def write_config(directory: Path) -> Path:
    (directory / "policy.yaml").write_text(textwrap.dedent(POLICY))
    (directory / "keys.yaml").write_text(textwrap.dedent(KEYS))
    return directory


@pytest.fixture
async def start_sidecar(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    started: list[Running] = []

    async def start(**overrides: object) -> Running:
        options: dict[str, object] = {
            "config": write_config(tmp_path),
            "listen": "127.0.0.1:0",
            "metrics_listen": None,
            "grace_seconds": 1.0,
        }
        settings = ServeSettings(**{**options, **overrides})  # type: ignore[arg-type]
        sidecar = Sidecar(settings)
        await sidecar.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
        running = Running(
            sidecar,
            channel,
            rls_pb2_grpc.RateLimitServiceStub(channel),
            external_auth_pb2_grpc.AuthorizationStub(channel),
        )
        started.append(running)
        return running

    yield start
    for running in started:
        await running.channel.close()
        await running.sidecar.stop()


@pytest.fixture
async def sidecar(start_sidecar: Callable[..., object]) -> Running:
    return await start_sidecar()  # type: ignore[no-any-return, misc]
