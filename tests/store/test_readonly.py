"""A real ``READONLY`` reply: the Redis store on a replica and on a demoted primary.

Two real valkey-server processes per test, one replicating the other
(``REPLICAOF``). A replica refuses the counter script's writes with
``READONLY``; the store must turn that into ``StoreError`` at once (no hang,
no other exception) and count again, without being recreated, once the
server it points at is a primary again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from test_stores import FIXED_MINUTE, count_admitted, hit_one

from harness.clock import FakeClock
from harness.valkey import ValkeyServer
from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.base import Clock, WindowResult
from ratelimit_ext.store.redis import RedisStore

pytestmark = pytest.mark.redis

PASSWORD = "replica-pa55-never-shown"
TIMEOUT = 2.0
"""The store's timeout: a call that hangs would end here, not with READONLY."""
QUICK = 0.5
"""Seconds a READONLY answer may take, on a busy machine (it takes ~1 ms)."""


@pytest.fixture
def primary() -> Iterator[ValkeyServer]:
    with ValkeyServer(password=PASSWORD) as server:
        yield server


@pytest.fixture
def replica(primary: ValkeyServer) -> Iterator[ValkeyServer]:
    """A second server, synced as a replica of ``primary``."""
    with ValkeyServer(password=PASSWORD) as server:
        server.replicate(primary)
        yield server


@pytest.fixture
async def primary_store(
    primary: ValkeyServer, fake_clock: FakeClock
) -> AsyncIterator[RedisStore]:
    store = RedisStore(primary.url, clock=fake_clock, timeout=TIMEOUT)
    yield store
    await store.close()


def readonly_replies(server: ValkeyServer) -> int:
    """How many ``READONLY`` errors the server has answered (``INFO errorstats``)."""
    with server.client() as client:
        stats = client.info("errorstats").get("errorstat_READONLY")
    return int(stats["count"]) if isinstance(stats, dict) else 0


def key_count(server: ValkeyServer) -> int:
    with server.client() as client:
        return int(client.dbsize())


async def refused_readonly(store: RedisStore, subject: str = "a") -> StoreError:
    """Hit ``store``; assert a quick ``StoreError`` caused by ``READONLY``."""
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        await hit_one(store, subject, FIXED_MINUTE)
    elapsed = time.monotonic() - started

    error = caught.value
    assert isinstance(error.__cause__, redis.exceptions.ReadOnlyError), repr(error)
    assert "readonly" in str(error).lower()  # "ReadOnlyError: You can't write..."
    assert "read only replica" in str(error)
    assert elapsed < QUICK, f"READONLY took {elapsed:.3f} s"
    return error


# --- a store pointed at a replica ------------------------------------------------


@pytest.mark.parametrize("clock", ["fake-clock", "server-clock"])
async def test_a_replica_refuses_the_scripts_writes_with_readonly(
    primary: ValkeyServer, replica: ValkeyServer, fake_clock: FakeClock, clock: str
) -> None:
    # With the server's clock the script calls TIME first: refused all the same.
    time_source: Clock | None = fake_clock if clock == "fake-clock" else None
    store = RedisStore(replica.url, clock=time_source, timeout=TIMEOUT)
    before = readonly_replies(replica)
    try:
        errors = [await refused_readonly(store) for _ in range(3)]
    finally:
        await store.close()

    assert readonly_replies(replica) - before == 3  # the server's own replies
    assert key_count(replica) == key_count(primary) == 0  # nothing was counted
    shown = [repr(store), *(str(e) for e in errors), *(repr(e) for e in errors)]
    assert all(PASSWORD not in text for text in shown)
    assert all(f":{replica.port}/" in str(e) for e in errors)


async def test_the_primary_counts_exactly_while_its_replica_refuses(
    primary: ValkeyServer,
    replica: ValkeyServer,
    primary_store: RedisStore,
    fake_clock: FakeClock,
) -> None:
    replica_store = RedisStore(replica.url, clock=fake_clock, timeout=TIMEOUT)
    try:
        await refused_readonly(replica_store, "a")
        admitted = await count_admitted(primary_store, "a", FIXED_MINUTE, 5)
        with primary.client() as client:
            assert client.wait(1, 2000) == 1  # the counter reached the replica
        await refused_readonly(replica_store, "b")  # any write: still refused
        # A hit over the limit writes nothing (refused hits are never counted),
        # so the replica answers it from the replicated counter.
        full = await hit_one(replica_store, "a", FIXED_MINUTE)
    finally:
        await replica_store.close()

    assert admitted == FIXED_MINUTE.capacity == 3
    assert full.windows == (WindowResult(False, 0, 60.0),)
    assert key_count(replica) == key_count(primary) == 1


# --- a primary demoted to a replica, then promoted again ------------------------


async def test_a_demoted_primary_answers_readonly_then_recovers_after_promotion(
    primary: ValkeyServer, primary_store: RedisStore
) -> None:
    with ValkeyServer(password=PASSWORD) as other:
        assert await count_admitted(primary_store, "a", FIXED_MINUTE, 2) == 2

        primary.replicate(other)  # REPLICAOF: its data is now other's (none)
        assert primary.role() == "slave"
        before = readonly_replies(primary)
        for _ in range(3):
            await refused_readonly(primary_store)
        refusals = readonly_replies(primary) - before
        keys_while_demoted = key_count(primary)

        primary.promote()  # REPLICAOF NO ONE; the same store object goes on
        recovered = [await hit_one(primary_store, "a", FIXED_MINUTE) for _ in range(4)]

    assert refusals == 3
    assert keys_while_demoted == 0  # the refused hits wrote nothing
    # Counting starts over from the data it synced (none), and is exact again.
    assert [r.allowed for r in recovered] == [True, True, True, False]
    assert recovered[0].windows == (WindowResult(True, 2, 60.0),)
