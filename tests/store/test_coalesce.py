"""Coalescing: concurrent decisions share store round trips, on real Redis."""

from __future__ import annotations

import asyncio

import pytest

from harness.valkey import ValkeyServer
from ratelimit_ext.errors import StoreError
from ratelimit_ext.policy.model import Unit, Window
from ratelimit_ext.store.base import CounterRequest
from ratelimit_ext.store.coalesce import CoalescingStore
from ratelimit_ext.store.redis import RedisStore

pytestmark = pytest.mark.redis

LIMIT = Window(40, Unit.HOUR)


async def test_concurrent_hits_share_batches_and_stay_exact(
    valkey: ValkeyServer,
) -> None:
    store = CoalescingStore(RedisStore(valkey.url))
    try:
        results = await asyncio.gather(
            *(store.hit([CounterRequest("one", (LIMIT,))]) for _ in range(100))
        )
    finally:
        await store.close()
    assert sum(r[0].allowed for r in results) == 40
    assert store.decisions == 100
    assert store.batches < 10  # all 100 were ready in the same loop turn


async def test_each_decision_gets_its_own_results(valkey: ValkeyServer) -> None:
    store = CoalescingStore(RedisStore(valkey.url), window_seconds=0.005)
    small = Window(1, Unit.HOUR)
    try:
        first, second = await asyncio.gather(
            store.hit([CounterRequest("a", (small,)), CounterRequest("b", (LIMIT,))]),
            store.hit([CounterRequest("a", (small,))]),
        )
    finally:
        await store.close()
    assert [r.allowed for r in first] == [True, True]
    assert first[1].windows[0].remaining == 39
    assert [r.allowed for r in second] == [False]
    assert store.batches == 1


async def test_a_failed_batch_fails_every_decision() -> None:
    server = ValkeyServer().start()
    store = CoalescingStore(RedisStore(server.url))
    server.stop()
    try:
        outcomes = await asyncio.gather(
            *(store.hit([CounterRequest("x", (LIMIT,))]) for _ in range(5)),
            return_exceptions=True,
        )
    finally:
        await store.close()
    assert all(isinstance(o, StoreError) for o in outcomes)


async def test_a_waiter_that_gives_up_leaves_the_batch_intact(
    valkey: ValkeyServer,
) -> None:
    store = CoalescingStore(RedisStore(valkey.url), window_seconds=0.05)
    try:
        impatient = asyncio.create_task(store.hit([CounterRequest("p", (LIMIT,))]))
        patient = asyncio.create_task(store.hit([CounterRequest("p", (LIMIT,))]))
        await asyncio.sleep(0.01)
        impatient.cancel()
        (result,) = await patient
    finally:
        await store.close()
    # Both hits were in the batch sent to Redis; the patient one sees both.
    assert result.allowed and result.windows[0].remaining == 38
