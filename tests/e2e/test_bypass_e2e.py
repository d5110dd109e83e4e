"""A bypass grant through a real Envoy: written in, in force, expired on time.

The stack is this module's own (memory store) with an hourly tier, so that no
minute boundary can reset a counter half-way through the test.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from e2e.stack import DOMAIN, Caller, Edge, make_callers, show
from harness.envoy import AUTHZ_LIMITED_PREFIX, EnvoyProcess, edge_bootstrap
from harness.server import ServerProcess
from harness.upstream import EchoUpstream

pytestmark = pytest.mark.envoy

PER_HOUR = 2
POLICY = {
    "domain": DOMAIN,
    "default_tier": "free",
    "tiers": [
        {"name": "free", "limits": [{"unit": "hour", "requests_per_unit": PER_HOUR}]}
    ],
    "descriptors": [{"key": "user_id", "rate_limit": {"from_tier": True}}],
}
RELOAD_WITHIN = 2.0
"""Seconds a written grant may take to be in force (and to expire)."""
GRANT_LIFETIME = 3
"""Whole seconds (at least) from writing the grant to its ``expires_at``."""


@pytest.fixture
def bypass_edge(tmp_path: Path) -> Iterator[Edge]:
    """Upstream + ratelimit-ext watching ``tmp_path/config`` + Envoy."""
    callers = make_callers({"granted": "free", "bystander": "free"})
    config = tmp_path / "config"
    config.mkdir()
    keys = [
        {
            "sha256": hashlib.sha256(c.key.encode()).hexdigest(),
            "identity": c.identity,
            "tier": c.tier,
        }
        for c in callers.values()
    ]
    (config / "policy.yaml").write_text(yaml.safe_dump(POLICY, sort_keys=False))
    (config / "api_keys.yaml").write_text(yaml.safe_dump({"api_keys": keys}))
    with ExitStack() as stack:
        upstream = stack.enter_context(EchoUpstream())
        server = stack.enter_context(ServerProcess(config, tmp_path))
        bootstrap = edge_bootstrap(
            server_port=server.port, upstream_port=upstream.port, domain=DOMAIN
        )
        envoy = stack.enter_context(EnvoyProcess(bootstrap, tmp_path))
        client = stack.enter_context(
            httpx.Client(base_url=envoy.http_url, trust_env=False, timeout=10.0)
        )
        yield Edge("memory", server, envoy, upstream, client, callers)


def write_atomically(path: Path, text: str) -> None:
    """Write a hidden temporary file beside ``path``, then rename it over."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def grant_file(caller: Caller, expires_at: float) -> str:
    grant = {
        "id": "g-e2e-1",
        "subject": {"identity": caller.identity},
        "mode": "full",
        "reason": "e2e test",
        "actor": "ops@example.com",
        "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
    }
    text: str = yaml.safe_dump({"bypass_grants": [grant]}, sort_keys=False)

    return text


def wait_for_status(
    send: Callable[[], httpx.Response], status: int, deadline: float
) -> httpx.Response:
    """Send until the answer has ``status`` or the deadline (monotonic) passes."""
    answer = send()
    while answer.status_code != status and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = send()
    return answer


def metric(edge: Edge, name: str, **labels: str) -> float | None:
    """One sample of the server's Prometheus endpoint, or None if absent."""
    url = f"http://127.0.0.1:{edge.server.metrics_port}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_grant_lifts_the_429_and_expiry_brings_it_back(bypass_edge: Edge) -> None:
    """429 -> grant file written -> 200 within 2 s -> at expires_at, 429 again."""
    edge = bypass_edge
    granted, bystander = edge.callers["granted"], edge.callers["bystander"]
    check_path = AUTHZ_LIMITED_PREFIX + "x"
    left_in_hour = 3600 - time.time() % 3600
    if left_in_hour < 15:  # the hourly counts must not straddle an hour
        time.sleep(left_in_hour + 0.05)
    rls = [edge.get("/", granted).status_code for _ in range(PER_HOUR + 1)]
    in_check = [edge.get(check_path, granted).status_code for _ in range(PER_HOUR + 1)]
    assert rls == in_check == [200] * PER_HOUR + [429]

    expires_at = math.ceil(time.time()) + GRANT_LIFETIME
    write_atomically(
        edge.server.config / "bypass.yaml", grant_file(granted, expires_at)
    )
    written = time.monotonic()
    passed = wait_for_status(
        lambda: edge.get("/", granted), 200, written + RELOAD_WITHIN
    )
    assert passed.status_code == 200, show(passed)
    assert edge.reached_upstream(passed)
    assert edge.get(check_path, granted).status_code == 200
    bystanders = [edge.get("/", bystander).status_code for _ in range(PER_HOUR + 1)]
    assert bystanders == [200] * PER_HOUR + [429]
    while time.time() < expires_at - 0.5:
        answer = edge.get("/", granted)
        assert answer.status_code == 200, show(answer)
        time.sleep(0.1)

    seconds_left = expires_at - time.time()
    refused = wait_for_status(
        lambda: edge.get("/", granted),
        429,
        time.monotonic() + seconds_left + RELOAD_WITHIN,
    )
    refused_at = time.time()

    assert refused.status_code == 429, show(refused)
    assert refused_at >= expires_at, (refused_at, expires_at)
    assert not edge.reached_upstream(refused)
    assert edge.get(check_path, granted).status_code == 429
    # One reload (the grant); the expiry needed none.
    assert metric(edge, "ratelimit_ext_policy_reloads_total", outcome="ok") == 1
    uses = metric(edge, "ratelimit_ext_bypass_uses_total", kind="identity", mode="full")
    assert uses is not None and uses >= 3
