"""Decisions and store latency reach the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Callable

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from harness.inprocess import Running
from harness.ports import free_port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


async def test_decisions_and_store_latency_are_exported(
    start_sidecar: Callable[..., object],
) -> None:
    port = free_port()
    running: Running = await start_sidecar(  # type: ignore[misc]
        metrics_listen=f"127.0.0.1:{port}"
    )
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="generic_key", value="three")
    req = rls_pb2.RateLimitRequest(
        domain="api", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    for _ in range(5):
        await running.rls.ShouldRateLimit(req)
    req.domain = "user-chosen-domain"
    await running.rls.ShouldRateLimit(req)

    text = await asyncio.to_thread(scrape, port)
    decisions = "ratelimit_ext_decisions_total"
    assert sample(text, decisions, domain="api", code="OK") == 3
    assert sample(text, decisions, domain="api", code="OVER_LIMIT") == 2
    # A domain the policy does not define never becomes a label value.
    assert "user-chosen-domain" not in text
    assert sample(text, decisions, domain="_unknown", code="OK") == 1
    latency = "ratelimit_ext_store_duration_seconds_bucket"
    # The 5th call was refused from the over-limit cache: no store call.
    assert sample(text, latency, store="memory", le="0.01") == 4
