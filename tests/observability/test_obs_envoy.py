"""/metrics after real traffic: Envoy -> ratelimit-ext (process) -> upstream.

Every request goes through Envoy's ext_authz and rate-limit filters, so the
counts below are what a Prometheus scrape shows for that traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from e2e.stack import wait_for_window_room
from harness.envoy import (
    AUTHZ_LIMITED_PREFIX,
    BUCKET_PREFIX,
    EnvoyProcess,
    edge_bootstrap,
)
from harness.server import ServerProcess
from harness.upstream import EchoUpstream
from observability.support import (
    CHECK_DOMAIN,
    DOMAIN,
    Sample,
    parse_scrape,
    scrape,
    value,
    write_policy,
)

pytestmark = pytest.mark.envoy

BUCKET_KEY = "envoy-bucket-key-0f6a2c"
CHECK_KEY = "envoy-check-key-83d1b7"
KEYS = {BUCKET_KEY: "bucket-caller-e5", CHECK_KEY: "check-caller-91"}
NAMED_LIMIT = 4


@dataclass
class Stack:
    server: ServerProcess
    envoy: EnvoyProcess
    client: httpx.Client

    def get(self, path: str, key: str | None, bucket: str | None = None) -> int:
        headers = {}
        if key is not None:
            headers["x-api-key"] = key
        if bucket is not None:
            headers["x-bucket"] = bucket
        return self.client.get(path, headers=headers).status_code

    def samples(self) -> tuple[str, list[Sample]]:
        assert self.server.metrics_port is not None
        text = scrape(self.server.metrics_port)
        return text, parse_scrape(text)


@pytest.fixture(
    scope="module",
    params=["memory", pytest.param("redis", marks=pytest.mark.redis)],
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    kind: str = request.param
    store = request.getfixturevalue("valkey").url if kind == "redis" else "memory"
    workdir = tmp_path_factory.mktemp(f"obs-{kind}")
    config = write_policy(workdir / "config", KEYS)
    with ExitStack() as stack:
        upstream = stack.enter_context(EchoUpstream())
        server = stack.enter_context(
            ServerProcess(config, workdir, store=store, extra_args=("--no-watch",))
        )
        bootstrap = edge_bootstrap(
            server_port=server.port,
            upstream_port=upstream.port,
            domain=DOMAIN,
            check_domain=CHECK_DOMAIN,
        )
        envoy = stack.enter_context(EnvoyProcess(bootstrap, workdir))
        client = stack.enter_context(
            httpx.Client(base_url=envoy.http_url, trust_env=False, timeout=10.0)
        )
        yield Stack(server, envoy, client)


def test_scrape_after_envoy_traffic(stack: Stack) -> None:
    """Decisions per domain and rule, near-limit, shadow, cache, authz reasons."""
    wait_for_window_room(needed=15.0)
    bucket = BUCKET_PREFIX + "x"
    named = [stack.get(bucket, BUCKET_KEY, "bkt-named") for _ in range(6)]
    shadowed = [stack.get(bucket, BUCKET_KEY, "bkt-shadowed") for _ in range(2)]
    detailed = [stack.get(bucket, BUCKET_KEY, f"bkt-detail-{v}") for v in "aab"]
    other = stack.get(bucket, BUCKET_KEY, "bkt-other")
    checked = [stack.get(AUTHZ_LIMITED_PREFIX + "x", CHECK_KEY) for _ in range(4)]
    missing = stack.get(bucket, None, "bkt-named")
    unknown = stack.get(bucket, "not-a-key-12", "bkt-named")

    text, samples = stack.samples()

    assert named == [200] * NAMED_LIMIT + [429, 429]
    assert shadowed == [200, 200] and detailed == [200] * 3 and other == 200
    assert checked == [200, 200, 200, 429]
    assert (missing, unknown) == (401, 401)
    decisions = "ratelimit_ext_decisions_total"
    assert value(samples, decisions, domain=DOMAIN, code="OK") == 10
    assert value(samples, decisions, domain=DOMAIN, code="OVER_LIMIT") == 2
    assert value(samples, decisions, domain=CHECK_DOMAIN, code="OK") == 3
    assert value(samples, decisions, domain=CHECK_DOMAIN, code="OVER_LIMIT") == 1
    rules = "ratelimit_ext_rule_decisions_total"
    assert value(samples, rules, rule="bucket_named", code="OK") == NAMED_LIMIT
    assert value(samples, rules, rule="bucket_named", code="OVER_LIMIT") == 2
    assert value(samples, rules, rule="bucket_shadow", code="OK") == 2
    assert value(samples, rules, rule="_unnamed", domain=DOMAIN) == 1
    assert value(samples, rules, domain=CHECK_DOMAIN, rule="free", code="OK") == 3
    detail = {"rule": "bucket_detailed", "code": "OK"}
    assert value(samples, rules, descriptor="generic_key=bkt-detail-a", **detail) == 2
    assert value(samples, rules, descriptor="generic_key=bkt-detail-b", **detail) == 1
    near = "ratelimit_ext_rule_near_limit_total"
    assert value(samples, near, rule="bucket_named") == 1
    shadow = "ratelimit_ext_shadow_would_block_total"
    assert value(samples, shadow, rule="bucket_shadow") == 1
    # The 6th bkt-named call was refused from the cache, without the store.
    assert value(samples, "ratelimit_ext_overlimit_cache_hits_total") == 1
    checks = "ratelimit_ext_authz_checks_total"
    assert value(samples, checks, result="allow", reason="allowed") == 15
    assert value(samples, checks, result="deny", reason="over_limit") == 1
    assert value(samples, checks, result="deny", reason="missing_key") == 1
    assert value(samples, checks, result="deny", reason="unknown_key") == 1
    store = stack.server.store.split(":")[0]
    latency = "ratelimit_ext_store_duration_seconds_count"
    assert value(samples, latency, store=store) == 5 + 2 + 3 + 1 + 4
    # Only the opted-in rule shows values; keys and identities never.
    for hidden in ("bkt-named", "bkt-shadowed", "bkt-other", *KEYS, *KEYS.values()):
        assert hidden not in text
    assert "not-a-key-12" not in text


def test_failures_left_no_trace_in_envoy(stack: Stack) -> None:
    """Envoy saw no failed ext_authz or rate-limit call along the way."""
    stats = stack.envoy.stats("ratelimit|ext_authz")
    failures = {
        name: count
        for name, count in stats.items()
        if name.endswith((".error", ".failure_mode_allowed")) and count
    }
    assert failures == {}
