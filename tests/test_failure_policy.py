"""Store deadlines, the circuit breaker, failure policies and the over-limit cache.

Store faults here are real: a Valkey process that is stopped (connection
refused) or paused with SIGSTOP (connections open, no answers). Only the
breaker's state machine is driven by a counting stand-in store, because
"fail exactly N times, then succeed" cannot be produced on demand for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

import pytest

from harness.clock import FakeClock
from harness.valkey import ValkeyServer
from ratelimit_ext.counting import CountingSettings, LimitCounter, Limited
from ratelimit_ext.errors import StoreError
from ratelimit_ext.overlimit import OverLimitCache
from ratelimit_ext.policy.model import Algorithm, Domain, FailurePolicy, Unit, Window
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store, WindowResult
from ratelimit_ext.store.guard import (
    BreakerState,
    CircuitBreaker,
    GuardedStore,
    GuardSettings,
)
from ratelimit_ext.store.redis import RedisStore
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import Code

MINUTE_5 = Window(5, Unit.MINUTE)


@pytest.fixture
def own_valkey() -> Iterator[ValkeyServer]:
    """A Valkey of this test's own, free to be stopped and paused."""
    with ValkeyServer() as server:
        yield server


def counter_on(
    url: str, policy: FailurePolicy, *, replicas: int = 1, timeout: float = 0.2
) -> LimitCounter:
    store = GuardedStore(
        RedisStore(url, timeout=1.0),
        GuardSettings(timeout_seconds=timeout, failure_threshold=1000),
    )
    settings = CountingSettings(failure_policy=policy, replicas=replicas)
    return LimitCounter(store, Telemetry.disabled(), settings)


def limited(subject: str = "s", window: Window = MINUTE_5) -> Limited:
    return Limited((window,), "five", subject, 1)


async def codes(
    counter: LimitCounter, times: int, domain: Domain | None = None
) -> list[Code]:
    return [(await counter.count(domain, [limited()]))[0].code for _ in range(times)]


@pytest.mark.redis
async def test_unavailable_policy_raises_store_error(own_valkey: ValkeyServer) -> None:
    counter = counter_on(own_valkey.url, FailurePolicy.UNAVAILABLE)
    own_valkey.stop()
    with pytest.raises(StoreError):
        await counter.count(None, [limited()])


@pytest.mark.redis
async def test_allow_and_deny_policies(own_valkey: ValkeyServer) -> None:
    allow = counter_on(own_valkey.url, FailurePolicy.ALLOW)
    deny = counter_on(own_valkey.url, FailurePolicy.DENY)
    own_valkey.stop()
    assert await codes(allow, 10) == [Code.OK] * 10
    refused = (await deny.count(None, [limited()]))[0]
    assert refused.code is Code.OVER_LIMIT
    assert 0 < refused.reset_seconds <= 60


@pytest.mark.redis
async def test_domain_policy_overrides_the_default(own_valkey: ValkeyServer) -> None:
    counter = counter_on(own_valkey.url, FailurePolicy.UNAVAILABLE)
    own_valkey.stop()
    domain = Domain("d", (), failure_policy=FailurePolicy.ALLOW)
    assert await codes(counter, 3, domain) == [Code.OK] * 3


@pytest.mark.redis
async def test_local_policy_enforces_a_share_then_returns_to_redis(
    own_valkey: ValkeyServer,
) -> None:
    counter = counter_on(own_valkey.url, FailurePolicy.LOCAL, replicas=2)
    assert await codes(counter, 1) == [Code.OK]  # counted in Redis
    own_valkey.restart()  # data lost, and down for the next step
    own_valkey.stop()
    # ceil(5 / 2) = 3 per replica while Redis is away.
    assert await codes(counter, 4) == [Code.OK] * 3 + [Code.OVER_LIMIT]
    verdict = (await counter.count(None, [limited()]))[0]
    assert verdict.window == Window(3, Unit.MINUTE)
    own_valkey.start()  # same port, empty
    # Redis answers again and its own (fresh) counter decides.
    assert await codes(counter, 6) == [Code.OK] * 5 + [Code.OVER_LIMIT]
    assert counter.health.healthy


@pytest.mark.redis
async def test_paused_redis_is_bounded_by_the_store_timeout(
    own_valkey: ValkeyServer,
) -> None:
    counter = counter_on(own_valkey.url, FailurePolicy.DENY, timeout=0.05)
    await counter.count(None, [limited()])  # warm the connection
    own_valkey.pause()
    try:
        started = time.perf_counter()
        verdict = (await counter.count(None, [limited("other")]))[0]
        elapsed = time.perf_counter() - started
    finally:
        own_valkey.resume()
    assert verdict.code is Code.OVER_LIMIT
    assert elapsed < 0.5


class CountingStore(Store):
    """Stand-in whose failures are switched on and off (see module docstring)."""

    name = "stand-in"

    def __init__(self) -> None:
        self.calls = 0
        self.failing = True
        self.delay = 0.0

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise StoreError("down")
        room = WindowResult(True, 1, 1.0)
        return [
            [CounterResult(True, tuple(room for _ in r.windows)) for r in group]
            for group in groups
        ]

    async def close(self) -> None:
        return None


async def test_breaker_opens_then_probes_back() -> None:
    clock = FakeClock(0.0)
    inner = CountingStore()
    store = GuardedStore(inner, GuardSettings(1.0, 3, 2.0), clock)
    request = [CounterRequest("s", (MINUTE_5,))]
    for _ in range(3):
        with pytest.raises(StoreError):
            await store.hit(request)
    assert store.breaker.state is BreakerState.OPEN
    with pytest.raises(StoreError, match="circuit open"):
        await store.hit(request)
    assert inner.calls == 3  # the open breaker did not call the store
    clock.advance(2.0)
    with pytest.raises(StoreError):
        await store.hit(request)  # the probe fails: open again
    assert (inner.calls, store.breaker.state) == (4, BreakerState.OPEN)
    clock.advance(2.0)
    inner.failing = False
    await store.hit(request)
    assert store.breaker.state is BreakerState.CLOSED


def test_breaker_lets_one_probe_at_a_time() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(GuardSettings(1.0, 1, 1.0), clock)
    breaker.failed()
    clock.advance(1.0)
    assert breaker.allow()
    assert not breaker.allow()


def refused(window: Window, reset: float) -> CounterResult:
    return CounterResult(False, (WindowResult(False, 0, reset),))


def test_overlimit_cache_holds_until_reset() -> None:
    clock = FakeClock(100.0)
    cache = OverLimitCache(clock)
    cache.remember("s", (MINUTE_5,), 1, refused(MINUTE_5, 30.0))
    assert cache.lookup("s", (MINUTE_5,), 1) == (MINUTE_5, 30.0)
    clock.advance(30.0)
    assert cache.lookup("s", (MINUTE_5,), 1) is None


def test_overlimit_cache_key_includes_limit_and_hits() -> None:
    cache = OverLimitCache(FakeClock(0.0))
    cache.remember("s", (MINUTE_5,), 1, refused(MINUTE_5, 30.0))
    assert cache.lookup("s", (Window(6, Unit.MINUTE),), 1) is None
    assert cache.lookup("s", (MINUTE_5,), 2) is None


def test_overlimit_cache_skips_sliding_windows_and_stays_bounded() -> None:
    clock = FakeClock(0.0)
    sliding = Window(5, Unit.MINUTE, Algorithm.SLIDING_WINDOW)
    cache = OverLimitCache(clock, max_entries=100)
    cache.remember("s", (sliding,), 1, refused(sliding, 30.0))
    assert len(cache) == 0
    for i in range(1000):
        cache.remember(f"s{i}", (MINUTE_5,), 1, refused(MINUTE_5, 30.0))
    assert len(cache) <= 100


async def test_a_cancelled_probe_does_not_wedge_the_breaker() -> None:
    """Envoy cancels late RPCs; a cancelled probe must leave room for another."""
    clock = FakeClock(0.0)
    inner = CountingStore()
    store = GuardedStore(inner, GuardSettings(1.0, 1, 1.0), clock)
    request = [CounterRequest("s", (MINUTE_5,))]
    with pytest.raises(StoreError):
        await store.hit(request)  # opens the breaker
    clock.advance(1.0)
    inner.failing = False
    inner.delay = 10.0
    probe = asyncio.create_task(store.hit(request))
    await asyncio.sleep(0.01)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    inner.delay = 0.0
    await store.hit(request)  # a new probe goes out and closes the breaker
    assert store.breaker.state is BreakerState.CLOSED
