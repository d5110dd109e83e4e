"""Every store behaves the same: the ``store`` fixture runs each test on each."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.connection
from redis.crc import key_slot

from harness.clock import EPOCH_DAY, FakeClock
from harness.ports import LOOPBACK
from harness.valkey import ValkeyServer
from ratelimit_ext.errors import StoreError
from ratelimit_ext.policy.model import Algorithm, Unit, Window
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store, WindowResult
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.store.redis import RedisStore

T0 = EPOCH_DAY
PASSWORD = "pa55-w0rd-never-shown"

FIXED_MINUTE = Window(3, Unit.MINUTE, Algorithm.FIXED_WINDOW)
SLIDING_MINUTE = Window(10, Unit.MINUTE, Algorithm.SLIDING_WINDOW)
BUCKET_SECOND = Window(4, Unit.SECOND, Algorithm.TOKEN_BUCKET, burst=6)


async def hit_one(
    store: Store, subject: str, *windows: Window, hits: int = 1
) -> CounterResult:
    [result] = await store.hit([CounterRequest(subject, windows, hits)])
    return result


async def count_admitted(store: Store, subject: str, window: Window, n: int) -> int:
    results = [await hit_one(store, subject, window) for _ in range(n)]
    return sum(r.allowed for r in results)


# --- the algorithms, on every store -----------------------------------------


async def test_fixed_window_counts_and_resets_at_the_boundary(
    store: Store, fake_clock: FakeClock
) -> None:
    fake_clock.advance(45)

    results = [await hit_one(store, "a", FIXED_MINUTE) for _ in range(4)]
    fake_clock.advance(15)
    fresh = await hit_one(store, "a", FIXED_MINUTE)

    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.windows[0].remaining for r in results] == [2, 1, 0, 0]
    assert results[0].windows == (WindowResult(True, 2, 15.0),)
    assert fresh.windows == (WindowResult(True, 2, 60.0),)


async def test_sliding_window_weights_the_previous_window(
    store: Store, fake_clock: FakeClock
) -> None:
    assert await count_admitted(store, "a", SLIDING_MINUTE, 10) == 10
    fake_clock.advance(60 + 15)  # previous window weighs 0.75: 7.5 of 10

    results = [await hit_one(store, "a", SLIDING_MINUTE) for _ in range(3)]

    assert [r.allowed for r in results] == [True, True, False]
    assert results[0].windows == (WindowResult(True, 1, 45.0),)  # floor(10 - 8.5)
    assert results[2].windows == (WindowResult(False, 0, 45.0),)


async def test_token_bucket_bursts_then_refills(
    store: Store, fake_clock: FakeClock
) -> None:
    assert await count_admitted(store, "a", BUCKET_SECOND, 8) == 6
    fake_clock.advance(0.5)  # 2 tokens back at 4 per second

    refused = await hit_one(store, "a", BUCKET_SECOND, hits=3)
    admitted = await hit_one(store, "a", BUCKET_SECOND, hits=2)

    assert refused.windows == (WindowResult(False, 2, 0.25),)
    assert admitted.windows == (WindowResult(True, 0, 1.5),)


@pytest.mark.parametrize(
    "window",
    [FIXED_MINUTE, SLIDING_MINUTE, BUCKET_SECOND],
    ids=lambda w: w.algorithm.value,
)
async def test_check_only_never_counts(store: Store, window: Window) -> None:
    checks = [await hit_one(store, "a", window, hits=0) for _ in range(20)]

    assert all(c.allowed for c in checks)
    assert checks[-1].windows[0].remaining == window.capacity
    assert await count_admitted(store, "a", window, 20) == window.capacity


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=[a.value for a in Algorithm])
async def test_limit_zero_refuses_everything(
    store: Store, algorithm: Algorithm
) -> None:
    zero = Window(0, Unit.MINUTE, algorithm)

    results = [await hit_one(store, "a", zero, hits=h) for h in (0, 1, 1)]

    assert [r.allowed for r in results] == [False, False, False]
    assert [r.windows[0].remaining for r in results] == [0, 0, 0]


@pytest.mark.parametrize(
    "window",
    [FIXED_MINUTE, SLIDING_MINUTE, BUCKET_SECOND],
    ids=lambda w: w.algorithm.value,
)
async def test_hits_above_the_limit_are_refused_and_not_counted(
    store: Store, window: Window
) -> None:
    refused = await hit_one(store, "a", window, hits=window.capacity + 1)

    assert not refused.allowed
    assert await count_admitted(store, "a", window, 20) == window.capacity


# --- several windows, requests and subjects ----------------------------------


async def test_a_request_refused_by_one_window_consumes_no_other_window(
    store: Store,
) -> None:
    minute = Window(10, Unit.MINUTE)
    day = Window(3, Unit.DAY)
    results = [await hit_one(store, "a", minute, day) for _ in range(5)]

    check = await hit_one(store, "a", minute, hits=0)

    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert results[3].windows[0].allowed is True  # the minute had room...
    assert results[3].windows[1].allowed is False  # ...the day had not
    assert check.windows[0].remaining == 7


async def test_all_or_nothing_across_algorithms(store: Store) -> None:
    windows = (FIXED_MINUTE, SLIDING_MINUTE, BUCKET_SECOND)
    first = await hit_one(store, "a", *windows, hits=3)

    refused = await hit_one(store, "a", *windows, hits=1)
    left = await hit_one(store, "a", SLIDING_MINUTE, BUCKET_SECOND, hits=0)

    assert first.allowed and not refused.allowed
    assert [w.allowed for w in refused.windows] == [False, True, True]
    assert [w.remaining for w in left.windows] == [7, 3]


async def test_a_changed_limit_keeps_counting_in_the_current_window(
    store: Store,
) -> None:
    await count_admitted(store, "a", Window(5, Unit.MINUTE), 3)

    lowered = await hit_one(store, "a", Window(4, Unit.MINUTE))
    below = await hit_one(store, "a", Window(3, Unit.MINUTE))
    raised = await hit_one(store, "a", Window(10, Unit.MINUTE))

    assert lowered.windows == (WindowResult(True, 0, 60.0),)
    assert below.windows == (WindowResult(False, 0, 60.0),)
    assert raised.windows == (WindowResult(True, 5, 60.0),)


async def test_subjects_algorithms_and_units_count_apart(store: Store) -> None:
    await count_admitted(store, "a", FIXED_MINUTE, 3)

    others = [
        await hit_one(store, "b", FIXED_MINUTE),
        await hit_one(store, "a", Window(3, Unit.HOUR)),
        await hit_one(store, "a", Window(3, Unit.MINUTE, Algorithm.SLIDING_WINDOW)),
    ]

    assert [r.windows[0].remaining for r in others] == [2, 2, 2]


async def test_one_call_answers_every_request_in_order(store: Store) -> None:
    requests = [
        CounterRequest("a", (Window(2, Unit.MINUTE),)),
        CounterRequest("b", ()),
        CounterRequest("a", (Window(2, Unit.MINUTE),), hits=2),
        CounterRequest("a", (Window(2, Unit.MINUTE),)),
    ]

    results = await store.hit(requests)

    assert [r.allowed for r in results] == [True, True, False, True]
    assert results[1] == CounterResult(True, ())
    assert results[3].windows == (WindowResult(True, 0, 60.0),)
    assert await store.hit([]) == []


@pytest.mark.parametrize(
    "window",
    [
        Window(50, Unit.MINUTE),
        Window(50, Unit.MINUTE, Algorithm.SLIDING_WINDOW),
        Window(50, Unit.HOUR, Algorithm.TOKEN_BUCKET),
    ],
    ids=lambda w: w.algorithm.value,
)
async def test_concurrent_hits_admit_exactly_the_limit(
    store: Store, window: Window
) -> None:
    request = CounterRequest("hot", (window, Window(1000, Unit.DAY)))

    batches = await asyncio.gather(*(store.hit([request]) for _ in range(200)))

    assert sum(result.allowed for [result] in batches) == 50


# --- memory ------------------------------------------------------------------


async def test_memory_reclaims_expired_counters(fake_clock: FakeClock) -> None:
    store = MemoryStore(fake_clock)
    second = Window(1, Unit.SECOND)
    minute = Window(1, Unit.MINUTE)
    await store.hit([CounterRequest(f"user-{i}", (second,)) for i in range(50_000)])
    await store.hit([CounterRequest("long-lived", (minute,))])
    assert len(store) == 50_001

    fake_clock.advance(2)
    await store.hit([CounterRequest("late", (second,))])

    assert len(store) == 2  # "long-lived" and "late"
    assert not (await hit_one(store, "long-lived", minute)).allowed


async def test_memory_sweeps_at_most_once_per_interval(fake_clock: FakeClock) -> None:
    store = MemoryStore(fake_clock, sweep_interval=10.0)
    second = Window(1, Unit.SECOND)
    await store.hit([CounterRequest(f"user-{i}", (second,)) for i in range(100)])

    fake_clock.advance(5)
    await store.hit([])
    kept = len(store)
    fake_clock.advance(5)
    await store.hit([])

    assert (kept, len(store)) == (100, 0)


# --- redis -------------------------------------------------------------------


@pytest.fixture
def private_valkey() -> Iterator[ValkeyServer]:
    """A server of this test's own, free to stop and restart."""
    with ValkeyServer() as server:
        yield server


@pytest.fixture
async def redis_store(
    valkey: ValkeyServer, fake_clock: FakeClock
) -> AsyncIterator[RedisStore]:
    store = RedisStore(valkey.url, clock=fake_clock)
    yield store
    await store.close()


def all_keys(server: ValkeyServer) -> list[bytes]:
    with server.client() as client:
        return list(client.scan_iter(count=1000))


@pytest.mark.redis
async def test_redis_every_key_has_a_ttl(
    redis_store: RedisStore, valkey: ValkeyServer, fake_clock: FakeClock
) -> None:
    fake_clock.advance(10)
    windows = (FIXED_MINUTE, SLIDING_MINUTE, BUCKET_SECOND, Window(5, Unit.DAY))
    await redis_store.hit([CounterRequest(f"s{i}", windows) for i in range(20)])

    with valkey.client() as client:
        ttls = {key: client.pttl(key) for key in client.scan_iter(count=1000)}

    assert len(ttls) == 20 * 4
    assert all(ttl > 0 for ttl in ttls.values())
    fixed_ttls = [t for k, t in ttls.items() if k.endswith(b":fw:60")]
    assert all(49_000 < t <= 50_000 for t in fixed_ttls)  # until the minute ends
    bucket_ttls = [t for k, t in ttls.items() if k.endswith(b":tb:1")]
    assert all(0 < t <= 250 for t in bucket_ttls)  # one token at 4 per second


@pytest.mark.redis
async def test_redis_refused_and_check_only_requests_write_nothing(
    redis_store: RedisStore, valkey: ValkeyServer
) -> None:
    windows = (FIXED_MINUTE, SLIDING_MINUTE, BUCKET_SECOND)
    await redis_store.hit([CounterRequest("check", windows, hits=0)])
    await redis_store.hit([CounterRequest("refused", windows, hits=50)])

    assert all_keys(valkey) == []


@pytest.mark.redis
async def test_redis_keys_of_one_subject_share_one_hash_tag(
    redis_store: RedisStore, valkey: ValkeyServer
) -> None:
    windows = (FIXED_MINUTE, SLIDING_MINUTE, BUCKET_SECOND, Window(5, Unit.DAY))
    await redis_store.hit([CounterRequest("tenant|user=42", windows)])

    keys = all_keys(valkey)

    matches = [re.fullmatch(rb"rlx:\{([0-9a-f]{16})\}:(\w+:\d+)", k) for k in keys]
    assert all(matches), keys
    assert len({m.group(1) for m in matches if m}) == 1
    suffixes = {m.group(2) for m in matches if m}
    assert suffixes == {b"fw:60", b"sw:60", b"tb:1", b"fw:86400"}
    assert len({key_slot(key) for key in keys}) == 1


@pytest.mark.redis
async def test_redis_one_hit_call_is_one_round_trip(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [
        CounterRequest(f"s{i}", (FIXED_MINUTE, BUCKET_SECOND)) for i in range(5)
    ]
    await redis_store.hit(requests)  # connects and loads the script
    sent: list[Any] = []
    original = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(command)
        await original(self, command, check_health)

    monkeypatch.setattr(
        redis.asyncio.connection.AbstractConnection, "send_packed_command", counting
    )
    results = await redis_store.hit(requests)

    assert len(sent) == 1
    assert all(r.allowed for r in results)


@pytest.mark.redis
async def test_redis_reloads_the_script_after_script_flush(
    redis_store: RedisStore, valkey: ValkeyServer
) -> None:
    await count_admitted(redis_store, "a", FIXED_MINUTE, 2)
    with valkey.client() as client:
        client.script_flush()

    after = await hit_one(redis_store, "a", FIXED_MINUTE)

    assert after.windows == (WindowResult(True, 0, 60.0),)


@pytest.mark.redis
async def test_redis_recovers_after_a_server_restart(
    private_valkey: ValkeyServer, fake_clock: FakeClock
) -> None:
    store = RedisStore(private_valkey.url, clock=fake_clock)
    try:
        await count_admitted(store, "a", FIXED_MINUTE, 3)
        private_valkey.restart()  # nothing persisted: counting starts over

        after = await hit_one(store, "a", FIXED_MINUTE)
    finally:
        await store.close()

    assert after.windows == (WindowResult(True, 2, 60.0),)


@pytest.mark.redis
async def test_redis_down_raises_store_error(
    private_valkey: ValkeyServer, fake_clock: FakeClock
) -> None:
    store = RedisStore(private_valkey.url, clock=fake_clock)
    await hit_one(store, "a", FIXED_MINUTE)
    private_valkey.stop()

    with pytest.raises(StoreError) as caught:
        await hit_one(store, "a", FIXED_MINUTE)
    await store.close()

    assert isinstance(caught.value.__cause__, redis.RedisError)
    assert f":{private_valkey.port}/" in str(caught.value)


@pytest.mark.redis
async def test_redis_timeout_raises_store_error() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind((LOOPBACK, 0))
        silent.listen()
        port = silent.getsockname()[1]
        store = RedisStore(
            f"redis://{LOOPBACK}:{port}", connect_timeout=0.2, timeout=0.2
        )

        with pytest.raises(StoreError) as caught:
            await hit_one(store, "a", FIXED_MINUTE)
        await store.close()

    assert isinstance(caught.value.__cause__, (redis.TimeoutError, TimeoutError))


@pytest.fixture(params=[None, "svc"], ids=["requirepass", "acl-user"])
def password_valkey(request: pytest.FixtureRequest) -> Iterator[ValkeyServer]:
    with ValkeyServer(password=PASSWORD, username=request.param) as server:
        yield server


@pytest.mark.redis
async def test_redis_password_never_shows(password_valkey: ValkeyServer) -> None:
    good = RedisStore(password_valkey.url)
    bad = RedisStore(password_valkey.url.replace(PASSWORD, PASSWORD[::-1]))

    admitted = await hit_one(good, "a", FIXED_MINUTE)
    with pytest.raises(StoreError) as caught:
        await hit_one(bad, "a", FIXED_MINUTE)
    await good.close()
    await bad.close()

    assert admitted.allowed
    shown = [repr(good), repr(bad), str(caught.value), repr(caught.value)]
    assert all(PASSWORD not in text for text in shown)
    assert all(PASSWORD[::-1] not in text for text in shown)
    assert ":***@" in repr(good)


@pytest.mark.redis
async def test_redis_reads_the_server_clock_by_default(valkey: ValkeyServer) -> None:
    store = RedisStore(valkey.url)

    results = [await hit_one(store, "a", FIXED_MINUTE) for _ in range(4)]
    await store.close()

    assert [r.allowed for r in results] in (
        [True, True, True, False],
        [True, True, True, True],  # a minute boundary passed in between
    )
    assert 0 < results[0].windows[0].reset_seconds <= 60


# --- memory and redis agree exactly ------------------------------------------


def random_request(rng: random.Random) -> CounterRequest:
    choices = [
        Window(rng.randint(0, 6), Unit.SECOND),
        Window(rng.randint(0, 6), Unit.MINUTE),
        Window(rng.randint(0, 9), Unit.SECOND, Algorithm.SLIDING_WINDOW),
        Window(rng.randint(0, 9), Unit.MINUTE, Algorithm.SLIDING_WINDOW),
        Window(rng.randint(0, 5), Unit.SECOND, Algorithm.TOKEN_BUCKET, burst=8),
        Window(rng.randint(1, 7), Unit.MINUTE, Algorithm.TOKEN_BUCKET),
    ]
    windows = tuple(rng.sample(choices, rng.randint(1, 3)))
    return CounterRequest(rng.choice("abc"), windows, hits=rng.choice([0, 1, 1, 2, 3]))


@pytest.mark.redis
async def test_memory_and_redis_give_identical_answers(
    valkey: ValkeyServer, fake_clock: FakeClock
) -> None:
    rng = random.Random(20240601)
    memory = MemoryStore(fake_clock)
    remote = RedisStore(valkey.url, clock=fake_clock)
    fake_clock.advance(0.123)

    for _ in range(400):
        fake_clock.advance(rng.choice([0, 0, 0.01, 0.1, 0.3, 0.77, 1.9, 31.3, 59.9]))
        requests = [random_request(rng) for _ in range(rng.randint(1, 3))]
        assert await memory.hit(requests) == await remote.hit(requests), requests
    await remote.close()
