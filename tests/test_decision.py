"""The decision engine: envoyproxy/ratelimit semantics plus tiers and rules."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from ratelimit_ext.counting import CountingSettings, LimitCounter
from ratelimit_ext.decision import DecisionEngine, DescriptorQuery, RateLimitQuery
from ratelimit_ext.errors import StoreError
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledPolicy
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import Unit, Window
from ratelimit_ext.policy.rules import Caller, rollout_bucket
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import UNLIMITED_REMAINING, Code, Verdict

POLICY = """
domain: api
default_tier: free
tiers:
  - name: free
    limits:
      - {unit: minute, requests_per_unit: 3}
      - {unit: day, requests_per_unit: 5}
  - name: pro
    limits:
      - {unit: minute, requests_per_unit: 10}
descriptors:
  - key: user_id
    rate_limit: {from_tier: true}
    descriptors:
      - key: tier
        rate_limit: {from_tier: true}
  - key: generic_key
    value: two
    rate_limit: {unit: minute, requests_per_unit: 2, name: two}
  - key: generic_key
    value: replacer
    rate_limit:
      unit: minute
      requests_per_unit: 100
      name: replacer
      replaces: [{name: two}]
  - key: generic_key
    value: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: generic_key
    value: free
    rate_limit: {unlimited: true}
  - key: generic_key
    value: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: quota
    value: a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota
    value: b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: files
    value: "/f/*"
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: plan
    rate_limit: {unit: minute, requests_per_unit: 10, name: plan}
rules:
  - name: partners-triple
    when: "has(caller.plan) && caller.plan == 'partner'"
    multiply: 3
    limits: [plan]
"""

KEYS = f"""
api_keys:
  - sha256: {hash_key("k-partner")}
    identity: partner-1
    tier: pro
    attributes: {{plan: partner}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def build(tmp_path: Path, clock: Clock, *, shadow_mode: bool = False) -> DecisionEngine:
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    (tmp_path / "keys.yaml").write_text(textwrap.dedent(KEYS))
    policy = ActivePolicy(CompiledPolicy.build(load_policy(tmp_path)))
    telemetry = Telemetry.disabled()
    counter = LimitCounter(MemoryStore(clock), telemetry, CountingSettings(), clock)
    return DecisionEngine(policy, counter, telemetry, shadow_mode=shadow_mode)


@pytest.fixture
def engine(tmp_path: Path, clock: Clock) -> DecisionEngine:
    return build(tmp_path, clock)


def query(*descriptors: Sequence[tuple[str, str]], hits: int = 1) -> RateLimitQuery:
    return RateLimitQuery(
        "api", tuple(DescriptorQuery(tuple(d)) for d in descriptors), hits
    )


async def codes(engine: DecisionEngine, q: RateLimitQuery, times: int) -> list[Code]:
    return [(await engine.decide(q)).code for _ in range(times)]


async def test_fixed_limit_counts_and_reports(engine: DecisionEngine) -> None:
    q = query([("generic_key", "two")])
    first = await engine.decide(q)
    status = first.descriptors[0]
    assert first.code is Code.OK
    assert status.window == Window(2, Unit.MINUTE)
    assert status.name == "two"
    assert status.remaining == 1
    assert 0 < status.reset_seconds <= 60
    assert await codes(engine, q, 2) == [Code.OK, Code.OVER_LIMIT]


async def test_requests_per_unit_zero_blocks_everything(engine: DecisionEngine) -> None:
    assert await codes(engine, query([("generic_key", "blocked")]), 1) == [
        Code.OVER_LIMIT
    ]


async def test_unknown_domain_and_unmatched_descriptors_are_ok(
    engine: DecisionEngine,
) -> None:
    unknown = await engine.decide(
        RateLimitQuery("nope", (DescriptorQuery((("a", "b"),)),))
    )
    unmatched = await engine.decide(query([("nothing", "here")]))
    for verdict in (unknown, unmatched):
        assert verdict.code is Code.OK
        assert verdict.descriptors[0].window is None


async def test_unlimited_never_blocks(engine: DecisionEngine) -> None:
    verdicts = [
        await engine.decide(query([("generic_key", "free")])) for _ in range(50)
    ]
    assert {v.code for v in verdicts} == {Code.OK}
    assert verdicts[-1].descriptors[0].remaining == UNLIMITED_REMAINING


async def test_shadow_rule_reports_but_never_blocks(engine: DecisionEngine) -> None:
    q = query([("generic_key", "shadow")])
    await engine.decide(q)
    second = await engine.decide(q)
    assert second.code is Code.OK
    assert second.descriptors[0].code is Code.OK
    assert second.descriptors[0].over_limit
    assert second.descriptors[0].remaining == 0
    assert second.descriptors[0].window == Window(1, Unit.MINUTE)


async def test_global_shadow_mode_forces_ok(tmp_path: Path, clock: Clock) -> None:
    engine = build(tmp_path, clock, shadow_mode=True)
    verdict = await engine.decide(query([("generic_key", "blocked")]))
    assert verdict.code is Code.OK
    assert verdict.descriptors[0].code is Code.OVER_LIMIT


async def test_replaces_removes_the_named_limit(engine: DecisionEngine) -> None:
    q = query([("generic_key", "two")], [("generic_key", "replacer")])
    verdicts = [await engine.decide(q) for _ in range(5)]
    assert {v.code for v in verdicts} == {Code.OK}
    assert verdicts[-1].descriptors[0].window is None
    assert verdicts[-1].descriptors[1].remaining == 95


async def test_default_counts_each_value_separately(engine: DecisionEngine) -> None:
    assert await codes(engine, query([("remote_address", "10.0.0.1")]), 2) == [
        Code.OK,
        Code.OVER_LIMIT,
    ]
    assert await codes(engine, query([("remote_address", "10.0.0.2")]), 1) == [Code.OK]


async def test_share_threshold_counts_values_together(engine: DecisionEngine) -> None:
    assert await codes(engine, query([("files", "/f/a")]), 1) == [Code.OK]
    assert await codes(engine, query([("files", "/f/b")]), 2) == [
        Code.OK,
        Code.OVER_LIMIT,
    ]


async def test_quota_mode_fails_only_when_all_quota_descriptors_are_over(
    engine: DecisionEngine,
) -> None:
    q = query([("quota", "a")], [("quota", "b")])
    # a: limit 1, b: limit 2 -> a is over from the 2nd call, b from the 3rd.
    assert await codes(engine, q, 3) == [Code.OK, Code.OK, Code.OVER_LIMIT]


async def test_per_descriptor_hits_addend_zero_checks_without_counting(
    engine: DecisionEngine,
) -> None:
    check = RateLimitQuery(
        "api", (DescriptorQuery((("generic_key", "two"),), hits=0),), hits=5
    )
    for _ in range(3):
        assert (await engine.decide(check)).descriptors[0].remaining == 2
    assert await codes(engine, query([("generic_key", "two")]), 1) == [Code.OK]


async def test_request_hits_addend_counts_several(engine: DecisionEngine) -> None:
    verdict = await engine.decide(query([("generic_key", "two")], hits=2))
    assert verdict.code is Code.OK and verdict.descriptors[0].remaining == 0


async def test_limit_override_has_its_own_counter(engine: DecisionEngine) -> None:
    entries = (("generic_key", "two"),)
    override = RateLimitQuery(
        "api", (DescriptorQuery(entries, override=Window(5, Unit.HOUR)),)
    )
    for _ in range(5):
        assert (await engine.decide(override)).code is Code.OK
    assert (await engine.decide(override)).code is Code.OVER_LIMIT
    configured = await engine.decide(query(list(entries)))
    assert configured.code is Code.OK and configured.descriptors[0].remaining == 1


async def test_tier_from_an_entry_of_the_same_descriptor(
    engine: DecisionEngine,
) -> None:
    free = query([("user_id", "u1"), ("tier", "free")])
    pro = query([("user_id", "u2"), ("tier", "pro")])
    assert await codes(engine, free, 4) == [Code.OK] * 3 + [Code.OVER_LIMIT]
    assert await codes(engine, pro, 11) == [Code.OK] * 10 + [Code.OVER_LIMIT]


async def test_tier_from_another_descriptor_of_the_request(
    engine: DecisionEngine,
) -> None:
    pro = query([("user_id", "u6")], [("tier", "pro")])
    assert await codes(engine, pro, 11) == [Code.OK] * 10 + [Code.OVER_LIMIT]


async def test_unknown_tier_falls_back_to_default_tier(engine: DecisionEngine) -> None:
    q = query([("user_id", "u3"), ("tier", "platinum")])
    assert await codes(engine, q, 4) == [Code.OK] * 3 + [Code.OVER_LIMIT]


async def test_refusal_reports_the_refusing_window(
    engine: DecisionEngine, clock: Clock
) -> None:
    q = query([("user_id", "u4"), ("tier", "free")])
    assert await codes(engine, q, 3) == [Code.OK] * 3
    clock.now += 60  # new minute; day window has 2 left
    assert await codes(engine, q, 3) == [Code.OK, Code.OK, Code.OVER_LIMIT]
    refused: Verdict = await engine.decide(q)
    # The window reported is the one that refused the request.
    assert refused.descriptors[0].window == Window(5, Unit.DAY)
    assert refused.descriptors[0].remaining == 0


async def test_refused_day_window_does_not_consume_minute_window(
    tmp_path: Path, clock: Clock
) -> None:
    engine = build(tmp_path, clock)
    q = query([("user_id", "u5"), ("tier", "free")])
    clock.now = (clock.now // 86400) * 86400 + 100  # start of a day window
    assert await codes(engine, q, 3) == [Code.OK] * 3
    clock.now += 60
    assert await codes(engine, q, 2) == [Code.OK] * 2  # day now full (5)
    assert await codes(engine, q, 5) == [Code.OVER_LIMIT] * 5
    clock.now += 86400  # next day, same minute offset
    # Minute window is fresh and unaffected by the 5 refused calls.
    assert await codes(engine, q, 4) == [Code.OK] * 3 + [Code.OVER_LIMIT]


async def test_caller_tier_from_api_key_identity(engine: DecisionEngine) -> None:
    # partner-1's key says tier pro; no tier entry in the request.
    q = query([("user_id", "partner-1")])
    assert await codes(engine, q, 11) == [Code.OK] * 10 + [Code.OVER_LIMIT]


async def test_business_rule_multiplies_for_matching_callers(
    engine: DecisionEngine,
) -> None:
    partner = query([("user_id", "partner-1")], [("plan", "x")])
    verdict = await engine.decide(partner)
    assert verdict.descriptors[1].window == Window(30, Unit.MINUTE)
    other = await engine.decide(query([("user_id", "someone")], [("plan", "x")]))
    assert other.descriptors[1].window == Window(10, Unit.MINUTE)


async def test_check_caller_enforces_tier(engine: DecisionEngine) -> None:
    caller = Caller("alice", "free")
    results = [(await engine.check_caller("api", caller)).code for _ in range(4)]
    assert results == [Code.OK] * 3 + [Code.OVER_LIMIT]
    assert (await engine.check_caller("nope", caller)).code is Code.OK


def test_rollout_bucket_is_stable_and_spread() -> None:
    assert rollout_bucket("r", "alice") == rollout_bucket("r", "alice")
    buckets = [rollout_bucket("r", f"user-{i}") for i in range(2000)]
    share = sum(b < 30 for b in buckets) / len(buckets)
    assert 0.25 < share < 0.35


class FailingStore(Store):
    name = "failing"

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        raise StoreError("down")

    async def close(self) -> None:
        return None


async def test_store_failure_raises_store_error(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    policy = ActivePolicy(CompiledPolicy.build(load_policy(tmp_path)))
    telemetry = Telemetry.disabled()
    counter = LimitCounter(FailingStore(), telemetry, CountingSettings())
    engine = DecisionEngine(policy, counter, telemetry)
    with pytest.raises(StoreError):
        await engine.decide(query([("generic_key", "two")]))
    assert not counter.health.healthy
    # Unlimited and unmatched descriptors never touch the store.
    assert (await engine.decide(query([("generic_key", "free")]))).code is Code.OK
