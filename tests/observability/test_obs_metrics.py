"""Metrics of an in-process sidecar, read back from its /metrics port."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from e2e.stack import wait_for_window_room
from harness.ports import LOOPBACK, free_port
from observability.support import (
    API_KEY,
    CHECK_DOMAIN,
    DOMAIN,
    IDENTITY,
    StartObs,
    parse_scrape,
    scrape,
    value,
)
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2
from ratelimit_ext.admin.api import SERVICE_NAME
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.counting import CountingSettings
from ratelimit_ext.decision import DescriptorQuery, RateLimitQuery
from ratelimit_ext.policy.model import FailurePolicy
from ratelimit_ext.store.guard import GuardSettings
from ratelimit_ext.telemetry import DETAIL_VALUES_CAP, OVERFLOW, Telemetry

RULES = "ratelimit_ext_rule_decisions_total"
ALLOWED_LABELS = {
    "domain",
    "code",
    "rule",
    "descriptor",
    "store",
    "error",
    "policy",
    "result",
    "reason",
    "mode",
    "kind",
    "outcome",
    "digest",
    "method",
    "status",
    "le",
}
"""Every label name the sidecar may export (``le``: histogram buckets)."""


@pytest.fixture(autouse=True)
def _room_in_the_minute() -> None:
    """Counts below assume one minute window; do not start just before its end."""
    wait_for_window_room(needed=10.0)


async def test_rule_decisions_near_limit_shadow_and_cache_hits(
    start_obs: StartObs,
) -> None:
    """Per rule: codes, near-limit and shadow counts; cache hits; by name only."""
    obs = await start_obs()
    for _ in range(6):  # limit 4: 4 OK (the 4th near the limit), 2 refused
        await obs.limit(("generic_key", "bkt-named"))
    for _ in range(2):  # shadow rule of limit 1: both pass, one would block
        await obs.limit(("generic_key", "bkt-shadowed"))
    await obs.limit(("generic_key", "bkt-other"))

    samples = await asyncio.to_thread(obs.samples)

    named = {"domain": DOMAIN, "rule": "bucket_named"}
    assert value(samples, RULES, code="OK", **named) == 4
    assert value(samples, RULES, code="OVER_LIMIT", **named) == 2
    assert value(samples, "ratelimit_ext_rule_near_limit_total", **named) == 1
    shadow = {"domain": DOMAIN, "rule": "bucket_shadow"}
    assert value(samples, RULES, code="OK", **shadow) == 2
    assert value(samples, "ratelimit_ext_shadow_would_block_total", **shadow) == 1
    assert value(samples, RULES, rule="_unnamed", code="OK") == 1
    # The 6th bkt-named call was refused from the cache, without the store.
    assert value(samples, "ratelimit_ext_overlimit_cache_hits_total") == 1
    assert value(samples, "ratelimit_ext_decisions_total", domain=DOMAIN) == 9


async def test_authorization_checks_by_reason(start_obs: StartObs) -> None:
    obs = await start_obs()
    await obs.check(None)
    await obs.check("not-a-known-key")
    for _ in range(4):  # tier free: 3 per minute, enforced in Check
        await obs.check(API_KEY, enforce=CHECK_DOMAIN)

    samples = await asyncio.to_thread(obs.samples)

    checks = "ratelimit_ext_authz_checks_total"
    assert value(samples, checks, result="deny", reason="missing_key") == 1
    assert value(samples, checks, result="deny", reason="unknown_key") == 1
    assert value(samples, checks, result="deny", reason="over_limit") == 1
    assert value(samples, checks, result="allow", reason="allowed") == 3
    # Check's enforcement is a rule decision too, named by the caller's tier.
    assert value(samples, RULES, domain=CHECK_DOMAIN, rule="free", code="OK") == 3


async def test_store_errors_by_class_and_failure_policy(start_obs: StartObs) -> None:
    """A refused connection, then the open breaker: each by its class name."""
    obs = await start_obs(
        store=f"redis://{LOOPBACK}:{free_port()}",
        counting=CountingSettings(failure_policy=FailurePolicy.ALLOW),
        guard=GuardSettings(timeout_seconds=2.0, failure_threshold=2, open_seconds=60),
    )
    for _ in range(3):
        response = await obs.limit(("generic_key", "bkt-named"))
        assert response.overall_code == response.OK

    samples = await asyncio.to_thread(obs.samples)

    errors = "ratelimit_ext_store_errors_total"
    assert value(samples, errors, store="redis", error="ConnectionError") == 2
    assert value(samples, errors, store="redis", error="CircuitOpen") == 1
    decided = "ratelimit_ext_failure_policy_decisions_total"
    assert value(samples, decided, policy="allow") == 3


async def test_admin_calls_by_method_and_result(
    start_obs: StartObs, tmp_path: Path
) -> None:
    token = tmp_path / "admin-token"
    token.write_text("admin-token-9d2e")
    admin_port = free_port()
    obs = await start_obs(
        admin=AdminSettings(
            listen=f"{LOOPBACK}:{admin_port}",
            token_file=token,
            audit_log=tmp_path / "audit.jsonl",
        )
    )
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{admin_port}") as channel:
        info = channel.unary_unary(
            f"/{SERVICE_NAME}/GetServerInfo",
            request_serializer=admin_pb2.GetServerInfoRequest.SerializeToString,
            response_deserializer=admin_pb2.GetServerInfoResponse.FromString,
        )
        await info(
            admin_pb2.GetServerInfoRequest(),
            metadata=(("authorization", "Bearer admin-token-9d2e"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await info(admin_pb2.GetServerInfoRequest())
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        usage = channel.unary_unary(
            f"/{SERVICE_NAME}/GetUsage",
            request_serializer=admin_pb2.GetUsageRequest.SerializeToString,
            response_deserializer=admin_pb2.GetUsageResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await usage(
                admin_pb2.GetUsageRequest(),
                metadata=(("authorization", "Bearer admin-token-9d2e"),),
            )
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    calls = "ratelimit_ext_admin_calls_total"
    expected = {
        ("GetServerInfo", "OK"): 1,
        ("GetServerInfo", "UNAUTHENTICATED"): 1,
        ("GetUsage", "INVALID_ARGUMENT"): 1,
    }
    for _ in range(100):  # a refused call is counted just after its status left
        samples = await asyncio.to_thread(obs.samples)
        counted = {
            (s.labels["method"], s.labels["result"]): s.value
            for s in samples
            if s.name == calls
        }
        if counted == expected:
            break
        await asyncio.sleep(0.02)
    assert counted == expected


async def test_reloads_by_outcome_and_the_version_in_force(
    start_obs: StartObs,
) -> None:
    obs = await start_obs(watch=True)
    reloader = obs.sidecar.reloader
    assert reloader is not None
    config = obs.sidecar.settings.config
    before = obs.sidecar.policy.current.policy.digest

    (config / "extra.yaml").write_text(
        "domain: extra\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n"
    )
    await reloader.check()
    after = obs.sidecar.policy.current.policy.digest
    (config / "broken.yaml").write_text("domain: [not, a, name]\n")
    await reloader.check()

    samples = await asyncio.to_thread(obs.samples)

    reloads = "ratelimit_ext_policy_reloads_total"
    assert value(samples, reloads, outcome="ok") == 1
    assert value(samples, reloads, outcome="failed") == 1
    loaded = [s for s in samples if s.name == "ratelimit_ext_policy_loaded_seconds"]
    assert [s.labels["digest"] for s in loaded] == [after[:12]]
    assert after != before


async def test_detailed_metric_values_are_capped_per_rule(
    start_obs: StartObs,
) -> None:
    """The operator's opt-in: values become labels, the first 1000 of them."""
    obs = await start_obs()
    engine = obs.sidecar.engine
    extra = 5
    for index in range(DETAIL_VALUES_CAP + extra):
        entries = (("generic_key", f"bkt-detail-{index}"),)
        await engine.decide(RateLimitQuery(DOMAIN, (DescriptorQuery(entries),)))
    await engine.decide(
        RateLimitQuery(DOMAIN, (DescriptorQuery((("generic_key", "bkt-detail-0"),)),))
    )

    samples = await asyncio.to_thread(obs.samples)

    detailed = [
        s for s in samples if s.name == RULES and s.labels["rule"] == "bucket_detailed"
    ]
    values = {s.labels["descriptor"]: s.value for s in detailed}
    assert len(values) == DETAIL_VALUES_CAP + 1
    assert values["generic_key=bkt-detail-0"] == 2
    assert values[OVERFLOW] == extra
    # Other rules never carry a descriptor label.
    others = [s for s in samples if s.name == RULES and s not in detailed]
    assert all("descriptor" not in s.labels for s in others)


def test_detail_cap_counts_everything_past_it_as_overflow() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(MeterProvider(metric_readers=[reader]), detail_values_cap=3)
    for detail in ["a", "b", "c", "d", "a", "e", "d"]:
        telemetry.record_rule("api", "r", "OK", f"k={detail}")

    data = reader.get_metrics_data()
    assert data is not None
    (points,) = [
        metric.data.data_points
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "ratelimit_ext.rule.decisions"
    ]
    counts = {p.attributes["descriptor"]: p.value for p in points}
    assert counts == {"k=a": 2, "k=b": 1, "k=c": 1, OVERFLOW: 3}


async def test_no_request_value_becomes_a_name_or_label(start_obs: StartObs) -> None:
    """Descriptor values, identities, keys and unknown domains stay out."""
    obs = await start_obs()
    secrets = ["bkt-named", "bkt-other-77", "val-7c2f", IDENTITY, API_KEY]
    await obs.limit(("generic_key", "bkt-named"))
    await obs.limit(("generic_key", "bkt-other-77"))
    await obs.limit(("user_id", IDENTITY))
    await obs.limit(("generic_key", "val-7c2f"), domain="dom-from-request-4e1a")
    await obs.check(API_KEY, enforce=CHECK_DOMAIN)
    await obs.check(API_KEY + "-wrong")

    text = await asyncio.to_thread(scrape, obs.metrics_port)
    samples = parse_scrape(text)

    for secret in [*secrets, "dom-from-request-4e1a"]:
        assert secret not in text
    ours = [s for s in samples if s.name != "target_info"]  # resource attributes
    labels = {n for s in ours for n in s.labels if not n.startswith("otel_scope_")}
    assert labels <= ALLOWED_LABELS
    names = {s.name for s in samples}
    assert all(re.fullmatch(r"[a-z_]+", name) for name in names), names
