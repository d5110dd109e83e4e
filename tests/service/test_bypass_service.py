"""Bypass grants over real gRPC: Check enforcement, ShouldRateLimit, metrics."""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.rpc import code_pb2

from harness.inprocess import Running
from harness.ports import free_port
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.verdict import UNLIMITED_REMAINING

Response = rls_pb2.RateLimitResponse
OTEL_LABELS = ("otel_scope_name", "otel_scope_schema_url", "otel_scope_version")
Descriptor = ratelimit_pb2.RateLimitDescriptor

GRANTS = f"""
bypass_grants:
  - id: g-alice
    subject: {{identity: alice}}
    mode: full
    reason: incident 42
    actor: ops@example.com
    expires_at: 2099-01-01T00:00:00Z
  - id: g-bob-key
    subject: {{api_key_sha256: {hash_key("key-pro")}}}
    mode: partial
    factor: 2
    reason: load test
    actor: ops@example.com
    expires_at: 2099-01-01T00:00:00Z
  - id: g-expired
    subject:
      domain: api
      descriptor: [{{key: generic_key, value: three}}]
    mode: full
    reason: migration
    actor: ops@example.com
    starts_at: 2020-01-01T00:00:00Z
    expires_at: 2021-01-01T00:00:00Z
"""
"""Besides the service suite's policy: alice (free, 2/min) fully exempt; bob's
key (pro, 5/min) doubled; an expired grant on ``generic_key: three``."""


@pytest.fixture
async def granted(tmp_path: Path, start_sidecar: Callable[..., object]) -> Running:
    """The service suite's sidecar with GRANTS in its config directory."""
    (tmp_path / "bypass.yaml").write_text(textwrap.dedent(GRANTS))
    left_in_minute = 60.0 - time.time() % 60.0
    if left_in_minute < 3:  # the 2/min and 5/min counts must not straddle minutes
        await asyncio.sleep(left_in_minute + 0.05)
    return await start_sidecar(  # type: ignore[no-any-return, misc]
        metrics_listen=f"127.0.0.1:{free_port()}"
    )


def check(key: str) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.headers["x-api-key"] = key
    req.attributes.context_extensions["ratelimit_domain"] = "api"
    return req


def request(key: str, value: str) -> rls_pb2.RateLimitRequest:
    entry = Descriptor.Entry(key=key, value=value)
    return rls_pb2.RateLimitRequest(
        domain="api", descriptors=[Descriptor(entries=[entry])]
    )


def bypass_uses(port: int) -> dict[tuple[str, str], float]:
    """``ratelimit_ext_bypass_uses_total`` samples by (mode, kind)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("ratelimit_ext_bypass_uses_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            assert set(labels) <= {"mode", "kind", *OTEL_LABELS}, line
            found[labels["mode"], labels["kind"]] = float(line.rsplit(" ", 1)[1])
    return found


def headers_of(options: object) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}  # type: ignore[attr-defined]


async def test_full_grant_lets_check_through_without_ratelimit_headers(
    granted: Running,
) -> None:
    """alice's free tier allows 2 per minute; with the grant, Check never says 429."""
    replies = [await granted.authz.Check(check("key-free")) for _ in range(5)]

    assert [r.status.code for r in replies] == [code_pb2.OK] * 5
    for reply in replies:
        assert headers_of(reply.ok_response.response_headers_to_add) == {}


async def test_key_grant_doubles_the_limits_enforced_in_check(
    granted: Running,
) -> None:
    """bob's key: pro's 5 per minute becomes 10, named in the headers."""
    replies = [await granted.authz.Check(check("key-pro")) for _ in range(11)]

    codes = [r.status.code for r in replies]
    assert codes == [code_pb2.OK] * 10 + [code_pb2.RESOURCE_EXHAUSTED]
    refused = headers_of(replies[-1].denied_response.headers)
    assert refused["ratelimit-limit"] == "10, 10;w=60"


async def test_full_grant_in_rls_answers_like_unlimited(granted: Running) -> None:
    """ShouldRateLimit: OK, no current_limit, the unlimited remaining count."""
    req = request("user_id", "alice")

    replies = [await granted.rls.ShouldRateLimit(req) for _ in range(5)]

    assert [r.overall_code for r in replies] == [Response.OK] * 5
    status = replies[-1].statuses[0]
    assert not status.HasField("current_limit")
    assert status.limit_remaining == UNLIMITED_REMAINING


async def test_key_grant_reaches_rls_through_the_identity_s_only_key(
    granted: Running,
) -> None:
    """bob has one key, so ShouldRateLimit for bob gets that key's grant."""
    req = request("user_id", "bob")

    replies = [await granted.rls.ShouldRateLimit(req) for _ in range(11)]

    assert replies[0].statuses[0].current_limit.requests_per_unit == 10
    codes = [r.overall_code for r in replies]
    assert codes == [Response.OK] * 10 + [Response.OVER_LIMIT]


async def test_expired_grant_changes_nothing(granted: Running) -> None:
    """A grant that ended in 2021 leaves the 3 per minute limit in force."""
    req = request("generic_key", "three")

    replies = [await granted.rls.ShouldRateLimit(req) for _ in range(4)]

    codes = [r.overall_code for r in replies]
    assert codes == [Response.OK] * 3 + [Response.OVER_LIMIT]


async def test_bypass_uses_are_exported_by_mode_and_kind(granted: Running) -> None:
    """Each use is counted with mode and kind only: no identity, no key."""
    await granted.authz.Check(check("key-free"))
    await granted.rls.ShouldRateLimit(request("user_id", "alice"))
    await granted.authz.Check(check("key-pro"))
    listen = granted.sidecar.settings.metrics_listen
    assert listen is not None

    uses = await asyncio.to_thread(bypass_uses, int(listen.rsplit(":", 1)[1]))

    assert uses == {("full", "identity"): 2, ("partial", "api_key"): 1}
