"""Bypass grants and emergency levels in the decision engine, on a fake clock."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from harness.clock import EPOCH_DAY, FakeClock
from ratelimit_ext.counting import CountingSettings, LimitCounter
from ratelimit_ext.decision import DecisionEngine, DescriptorQuery, RateLimitQuery
from ratelimit_ext.policy.bypass import BypassIndex, scale_windows
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledPolicy
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import Algorithm, Unit, Window
from ratelimit_ext.policy.rules import Caller, rollout_bucket
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import UNLIMITED_REMAINING, Code

POLICY = """
domain: api
default_tier: free
tiers:
  - name: free
    limits: [{unit: minute, requests_per_unit: 2}]
  - name: gold
    limits: [{unit: minute, requests_per_unit: 2}]
descriptors:
  - key: user_id
    rate_limit: {from_tier: true}
  - key: generic_key
    value: two
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: generic_key
    value: other
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: generic_key
    value: blocked
    rate_limit: {unit: minute, requests_per_unit: 0}
"""

OTHER_DOMAIN = """
domain: other
descriptors:
  - key: generic_key
    rate_limit: {unit: minute, requests_per_unit: 1}
"""

KEYS = f"""
api_keys:
  - {{sha256: {hash_key("k-solo")}, identity: solo, tier: free}}
  - {{sha256: {hash_key("k-twin-1")}, identity: twin, tier: free}}
  - {{sha256: {hash_key("k-twin-2")}, identity: twin, tier: free}}
"""

NOW = EPOCH_DAY
"""The fake clock's start: a minute boundary, so one minute window per test."""


def at(offset: float) -> str:
    """RFC 3339 text for ``NOW + offset`` seconds."""
    return datetime.fromtimestamp(NOW + offset, UTC).isoformat()


def grant(
    grant_id: str,
    subject: str,
    *,
    mode: str = "full",
    start: float | None = None,
    end: float = 3600,
    extra: str = "",
) -> str:
    """One ``bypass_grants`` entry, as YAML."""
    lines = [
        f"- id: {grant_id}",
        f"  subject: {subject}",
        f"  mode: {mode}",
        "  reason: test",
        "  actor: ops@example.com",
        f"  expires_at: {at(end)}",
    ]
    if start is not None:
        lines.append(f"  starts_at: {at(start)}")
    lines.extend(f"  {line}" for line in extra.splitlines() if line)
    return "\n".join(lines) + "\n"


class Setup:
    """An engine over POLICY, KEYS and the given bypass YAML, with metrics."""

    def __init__(self, directory: Path, bypass: str, clock: FakeClock) -> None:
        (directory / "policy.yaml").write_text(textwrap.dedent(POLICY))
        (directory / "other.yaml").write_text(textwrap.dedent(OTHER_DOMAIN))
        (directory / "keys.yaml").write_text(textwrap.dedent(KEYS))
        if bypass:
            (directory / "bypass.yaml").write_text(bypass)
        self.policy = ActivePolicy(CompiledPolicy.build(load_policy(directory)))
        self.reader = InMemoryMetricReader()
        telemetry = Telemetry(MeterProvider(metric_readers=[self.reader]))
        counter = LimitCounter(MemoryStore(clock), telemetry, CountingSettings(), clock)
        self.engine = DecisionEngine(self.policy, counter, telemetry, clock=clock)

    async def codes(
        self, times: int, *entries: tuple[str, str], domain: str = "api"
    ) -> list[Code]:
        """Decide ``times`` times; each entry is a descriptor of its own."""
        q = query(*([entry] for entry in entries), domain=domain)
        return [(await self.engine.decide(q)).code for _ in range(times)]

    def uses(self) -> dict[tuple[str, str], int]:
        """``ratelimit_ext.bypass.uses`` by (mode, kind)."""
        data = self.reader.get_metrics_data()
        metrics = [
            metric
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "ratelimit_ext.bypass.uses"
        ]
        found: dict[tuple[str, str], int] = {}
        for metric in metrics:
            for point in metric.data.data_points:
                attributes = dict(point.attributes or {})
                assert set(attributes) == {"mode", "kind"}, attributes
                key = (str(attributes["mode"]), str(attributes["kind"]))
                found[key] = int(point.value)  # type: ignore[union-attr]
        return found


def query(
    *descriptors: Sequence[tuple[str, str]], domain: str = "api"
) -> RateLimitQuery:
    return RateLimitQuery(domain, tuple(DescriptorQuery(tuple(d)) for d in descriptors))


def bypass_file(*grants: str, levels: str = "") -> str:
    text = "bypass_grants:\n" + textwrap.indent("".join(grants), "  ")
    if levels:
        text += "emergency_levels:\n" + textwrap.indent(levels, "  ")
    return text


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


ALICE = ("user_id", "alice")


# --- time ---------------------------------------------------------------------


async def test_grant_starts_and_expires_on_the_second_without_reload(
    tmp_path: Path, clock: FakeClock
) -> None:
    """In force from starts_at (inclusive) to expires_at (exclusive), same policy."""
    bypass = bypass_file(grant("g-1", "{identity: alice}", start=10, end=20))
    setup = Setup(tmp_path, bypass, clock)
    compiled = setup.policy.current

    before = await setup.codes(3, ALICE)
    clock.now = NOW + 9.999
    just_before = await setup.codes(1, ALICE)
    clock.now = NOW + 10
    during = await setup.codes(5, ALICE)
    clock.now = NOW + 19.999
    last_moment = await setup.codes(1, ALICE)
    clock.now = NOW + 20
    after = await setup.codes(1, ALICE)

    assert before == [Code.OK, Code.OK, Code.OVER_LIMIT]
    assert just_before == [Code.OVER_LIMIT]
    assert during == [Code.OK] * 5
    assert last_moment == [Code.OK]
    assert after == [Code.OVER_LIMIT]
    assert setup.policy.current is compiled


async def test_full_grant_reports_unlimited_and_counts_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    """``full`` answers like an ``unlimited`` rule and leaves the counter alone."""
    bypass = bypass_file(grant("g-1", "{identity: alice}", end=10))
    setup = Setup(tmp_path, bypass, clock)

    verdict = await setup.engine.decide(query([ALICE]))
    for _ in range(10):
        await setup.engine.decide(query([ALICE]))
    clock.now = NOW + 10
    after = await setup.codes(3, ALICE)

    status = verdict.descriptors[0]
    assert verdict.code is Code.OK
    assert (status.window, status.remaining) == (None, UNLIMITED_REMAINING)
    assert after == [Code.OK, Code.OK, Code.OVER_LIMIT]


# --- modes and subjects -------------------------------------------------------


async def test_partial_grant_multiplies_every_window(
    tmp_path: Path, clock: FakeClock
) -> None:
    """factor 2.5 on a limit of 2 gives 5 (rounded down), reported as the limit."""
    bypass = bypass_file(
        grant("g-1", "{identity: alice}", mode="partial", extra="factor: 2.5")
    )
    setup = Setup(tmp_path, bypass, clock)

    first = await setup.engine.decide(query([ALICE]))
    rest = await setup.codes(5, ALICE)

    assert first.descriptors[0].window == Window(5, Unit.MINUTE)
    assert first.descriptors[0].remaining == 4
    assert rest == [Code.OK] * 4 + [Code.OVER_LIMIT]


@pytest.mark.parametrize(
    ("limit", "burst", "factor", "expected"),
    [
        (2, None, 2.5, (5, None)),
        (100, None, 0.29, (29, None)),
        (3, None, 0.1, (1, None)),
        (0, None, 10, (0, None)),
        (10, 4, 3, (30, 12)),
    ],
)
def test_scaled_limits_round_down_but_never_to_zero(
    limit: int, burst: int | None, factor: float, expected: tuple[int, int | None]
) -> None:
    """Rounded down, at least 1 unless the limit was 0; a bucket's burst too."""
    window = Window(limit, Unit.MINUTE, Algorithm.TOKEN_BUCKET, burst)

    (scaled,) = scale_windows((window,), factor)

    assert (scaled.limit, scaled.burst) == expected


async def test_partial_grant_keeps_a_zero_limit_closed(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A limit of 0 times any factor stays 0: partial never opens a blocked path."""
    bypass = bypass_file(
        grant("g-1", "{identity: alice}", mode="partial", extra="factor: 100")
    )
    setup = Setup(tmp_path, bypass, clock)

    codes = await setup.codes(1, ("generic_key", "blocked"))
    granted = await setup.engine.decide(query([ALICE], [("generic_key", "blocked")]))

    assert codes == [Code.OVER_LIMIT]
    assert granted.code is Code.OVER_LIMIT


async def test_approval_pending_is_not_in_force_and_approved_is(
    tmp_path: Path, clock: FakeClock
) -> None:
    """``requires_approval`` without ``approved_by`` does nothing yet."""
    bypass = bypass_file(
        grant("g-1", "{identity: bob}", extra="requires_approval: true"),
        grant(
            "g-2",
            "{identity: carol}",
            extra="requires_approval: true\napproved_by: lead@example.com",
        ),
    )
    setup = Setup(tmp_path, bypass, clock)

    pending = await setup.codes(3, ("user_id", "bob"))
    approved = await setup.codes(3, ("user_id", "carol"))

    assert pending == [Code.OK, Code.OK, Code.OVER_LIMIT]
    assert approved == [Code.OK] * 3


async def test_tier_grant_covers_every_caller_of_the_tier(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A tier grant follows the tier entry of the request."""
    setup = Setup(tmp_path, bypass_file(grant("g-1", "{tier: gold}")), clock)

    gold = await setup.codes(3, ("user_id", "dora"), ("tier", "gold"))
    free = await setup.codes(3, ("user_id", "erin"), ("tier", "free"))

    assert gold == [Code.OK] * 3
    assert free == [Code.OK, Code.OK, Code.OVER_LIMIT]


async def test_descriptor_grant_covers_only_matching_entries_of_its_domain(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Same keys in order; a value-less entry matches any value; one domain."""
    bypass = bypass_file(
        grant(
            "g-1",
            "{domain: api, descriptor: [{key: generic_key, value: two}]}",
        ),
        grant("g-2", "{domain: other, descriptor: [{key: generic_key}]}"),
    )
    setup = Setup(tmp_path, bypass, clock)

    granted = await setup.codes(3, ("generic_key", "two"))
    other_value = await setup.codes(3, ("generic_key", "other"))
    any_value = await setup.codes(3, ("generic_key", "x"), domain="other")

    assert granted == [Code.OK] * 3
    assert other_value == [Code.OK, Code.OK, Code.OVER_LIMIT]
    assert any_value == [Code.OK] * 3
    assert setup.uses() == {("full", "descriptor"): 6}


async def test_identity_grant_covers_every_descriptor_of_the_request(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The caller named by the request is exempt from all its limits there."""
    setup = Setup(tmp_path, bypass_file(grant("g-1", "{identity: alice}")), clock)

    codes = await setup.codes(3, ALICE)
    both = [
        (await setup.engine.decide(query([ALICE], [("generic_key", "two")]))).code
        for _ in range(3)
    ]

    assert codes == [Code.OK] * 3
    assert both == [Code.OK] * 3
    assert setup.uses() == {("full", "identity"): 9}


async def test_full_wins_over_partial_and_larger_factor_wins(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Several grants in force: full first, then the largest factor."""
    bypass = bypass_file(
        grant("g-1", "{identity: alice}", mode="partial", extra="factor: 2"),
        grant("g-2", "{tier: free}", mode="partial", extra="factor: 3"),
        grant("g-3", "{identity: bob}", mode="partial", extra="factor: 2"),
        grant("g-4", "{tier: gold}"),
    )
    setup = Setup(tmp_path, bypass, clock)

    alice = await setup.engine.decide(query([ALICE], [("tier", "free")]))
    bob = await setup.engine.decide(query([("user_id", "bob")], [("tier", "gold")]))

    assert alice.descriptors[0].window == Window(6, Unit.MINUTE)
    assert bob.descriptors[0].remaining == UNLIMITED_REMAINING
    assert setup.uses() == {("partial", "tier"): 1, ("full", "tier"): 1}


# --- API keys -----------------------------------------------------------------


async def test_key_grant_in_check_follows_the_presented_key(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Check knows the key: only the granted one of an identity's keys is exempt."""
    bypass = bypass_file(
        grant("g-1", f"{{api_key_sha256: {hash_key('k-twin-1')}}}"),
    )
    setup = Setup(tmp_path, bypass, clock)
    granted = Caller("twin", "free", key_sha256=hash_key("k-twin-1"))
    other = Caller("twin", "free", key_sha256=hash_key("k-twin-2"))

    with_grant = [await setup.engine.check_caller("api", granted) for _ in range(3)]
    without = [await setup.engine.check_caller("api", other) for _ in range(3)]

    assert [v.code for v in with_grant] == [Code.OK] * 3
    assert with_grant[0].descriptors[0].remaining == UNLIMITED_REMAINING
    assert [v.code for v in without] == [Code.OK, Code.OK, Code.OVER_LIMIT]
    assert setup.uses() == {("full", "api_key"): 3}


async def test_key_grant_in_rls_needs_an_identity_with_one_key(
    tmp_path: Path, clock: FakeClock
) -> None:
    """ShouldRateLimit sees an identity: a key grant applies only if unambiguous."""
    bypass = bypass_file(
        grant("g-1", f"{{api_key_sha256: {hash_key('k-solo')}}}"),
        grant("g-2", f"{{api_key_sha256: {hash_key('k-twin-1')}}}"),
    )
    setup = Setup(tmp_path, bypass, clock)

    solo = await setup.codes(3, ("user_id", "solo"))
    twin = await setup.codes(3, ("user_id", "twin"))

    assert solo == [Code.OK] * 3
    assert twin == [Code.OK, Code.OK, Code.OVER_LIMIT]


async def test_partial_grant_in_check_scales_the_tier_windows(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Check enforcement uses the same grants: 2 per minute times 2."""
    bypass = bypass_file(
        grant("g-1", "{identity: solo}", mode="partial", extra="factor: 2")
    )
    setup = Setup(tmp_path, bypass, clock)
    caller = Caller("solo", "free", key_sha256=hash_key("k-solo"))

    verdicts = [await setup.engine.check_caller("api", caller) for _ in range(5)]

    assert [v.code for v in verdicts] == [Code.OK] * 4 + [Code.OVER_LIMIT]
    assert verdicts[0].descriptors[0].window == Window(4, Unit.MINUTE)
    assert setup.uses() == {("partial", "identity"): 5}


# --- emergency levels ---------------------------------------------------------


def level(level_id: str, percent: float, domain: str | None = None) -> str:
    scope = f", domain: {domain}" if domain else ""
    return (
        f"- {{id: {level_id}, percent: {percent}, reason: outage, actor: sre, "
        f"expires_at: {at(60)}{scope}}}\n"
    )


def test_emergency_share_is_stable_and_roughly_proportional(
    tmp_path: Path, clock: FakeClock
) -> None:
    """About ``percent`` of identities, always the same ones (level id + identity)."""
    setup = Setup(tmp_path, bypass_file(levels=level("e-1", 30, "api")), clock)
    index = setup.policy.current.bypass
    assert index is not None
    callers = [Caller(f"user-{i}") for i in range(2000)]

    chosen = [index.for_caller("api", c, NOW) is not None for c in callers]
    again = [index.for_caller("api", c, NOW) is not None for c in callers]

    assert chosen == again
    assert 0.25 < sum(chosen) / len(chosen) < 0.35
    assert chosen == [rollout_bucket("e-1", c.identity or "") < 30 for c in callers]
    assert index.for_caller("other", callers[chosen.index(True)], NOW) is None
    assert index.for_caller("api", Caller(), NOW) is None
    assert index.for_caller("api", callers[chosen.index(True)], NOW + 60) is None


async def test_emergency_level_lifts_every_limit_of_its_domain(
    tmp_path: Path, clock: FakeClock
) -> None:
    """At 100 % for every domain: all limits lifted, even without an identity."""
    setup = Setup(tmp_path, bypass_file(levels=level("e-1", 100)), clock)

    api = await setup.codes(3, ("generic_key", "two"))
    other = await setup.codes(3, ("generic_key", "x"), domain="other")
    clock.now = NOW + 60
    expired = await setup.codes(3, ("generic_key", "two"))

    assert api == [Code.OK] * 3
    assert other == [Code.OK] * 3
    assert expired == [Code.OK, Code.OK, Code.OVER_LIMIT]
    assert setup.uses() == {("full", "emergency"): 6}


# --- no grants ----------------------------------------------------------------


def test_policy_without_grants_builds_no_index(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Nothing to look up on the request path when there is nothing to bypass."""
    setup = Setup(tmp_path, "", clock)

    assert setup.policy.current.bypass is None
    assert BypassIndex.build(setup.policy.current.policy) is None
