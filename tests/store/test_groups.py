"""Groups: requests decided together, all or nothing, on every store.

The ``store`` fixture runs each test on memory, Redis and Redis Cluster. The
cluster-only tests at the end place subjects on chosen masters to check the
two cluster paths: one call over several slots of one master, and a group
split over masters whose committed part is taken back.
"""

from __future__ import annotations

import pytest

from harness.clock import FakeClock
from harness.cluster import ValkeyCluster
from harness.valkey import ValkeyServer
from ratelimit_ext.policy.model import Algorithm, Unit, Window
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store
from ratelimit_ext.store.cluster import RedisClusterStore
from ratelimit_ext.store.redis import RedisStore
from ratelimit_ext.store.script import subject_slot, undo_script

TEN = Window(10, Unit.MINUTE)
ONE = Window(1, Unit.MINUTE)
WINDOWS = {
    "fixed": Window(5, Unit.MINUTE, Algorithm.FIXED_WINDOW),
    "sliding": Window(5, Unit.MINUTE, Algorithm.SLIDING_WINDOW),
    "bucket": Window(5, Unit.MINUTE, Algorithm.TOKEN_BUCKET, burst=5),
}


def request(
    subject: str, window: Window, hits: int = 1, binding: bool = True
) -> CounterRequest:
    return CounterRequest(subject, (window,), hits, binding)


async def together(store: Store, *requests: CounterRequest) -> list[CounterResult]:
    (results,) = await store.hit_groups([requests])
    return results


async def remaining(store: Store, subject: str, window: Window) -> int:
    """What a check-only hit sees left in ``subject``'s window."""
    [result] = await store.hit([CounterRequest(subject, (window,), hits=0)])
    return result.windows[0].remaining


async def test_a_refused_request_withholds_the_hits_of_the_others(store: Store) -> None:
    first = await together(store, request("a", TEN), request("b", ONE))
    second = await together(store, request("a", TEN), request("b", ONE))

    assert [r.allowed for r in first] == [True, True]
    assert [r.windows[0].remaining for r in first] == [9, 0]
    assert [r.allowed for r in second] == [True, False]
    assert second[0].windows[0].remaining == 9  # shown as not counted
    assert await remaining(store, "a", TEN) == 9


@pytest.mark.parametrize("algorithm", sorted(WINDOWS))
async def test_no_algorithm_keeps_the_hits_of_a_refused_group(
    store: Store, fake_clock: FakeClock, algorithm: str
) -> None:
    window = WINDOWS[algorithm]
    fake_clock.advance(30)
    await together(store, request("a", window, hits=2), request("b", ONE))
    before = await remaining(store, "a", window)

    refused = await together(store, request("a", window, hits=2), request("b", ONE))

    assert [r.allowed for r in refused] == [True, False]
    assert before == 3
    assert await remaining(store, "a", window) == before


async def test_a_refused_non_binding_request_withholds_nothing(store: Store) -> None:
    await together(store, request("a", TEN), request("s", ONE, binding=False))

    results = await together(store, request("a", TEN), request("s", ONE, binding=False))

    assert [r.allowed for r in results] == [True, False]
    assert results[0].windows[0].remaining == 8
    assert await remaining(store, "a", TEN) == 8


async def test_requests_on_one_counter_count_one_after_the_other(store: Store) -> None:
    three = Window(3, Unit.MINUTE)

    first = await together(store, request("x", three), request("x", three))
    second = await together(store, request("x", three), request("x", three))

    assert [r.windows[0].remaining for r in first] == [2, 1]
    assert [r.allowed for r in second] == [True, False]
    assert await remaining(store, "x", three) == 1


async def test_groups_of_one_call_are_decided_independently(store: Store) -> None:
    await store.hit([request("full", ONE)])

    rejected, admitted = await store.hit_groups(
        [[request("a", TEN), request("full", ONE)], [request("c", TEN)]]
    )

    assert [r.allowed for r in rejected] == [True, False]
    assert [r.allowed for r in admitted] == [True]
    assert await remaining(store, "a", TEN) == 10
    assert await remaining(store, "c", TEN) == 9


async def test_a_request_without_windows_has_room(store: Store) -> None:
    results = await together(store, CounterRequest("none", ()), request("a", TEN))

    assert [r.allowed for r in results] == [True, True]
    assert results[0].windows == ()
    assert await remaining(store, "a", TEN) == 9


# --- Redis Cluster: one call per master, undo across masters ---------------------


def subjects_on(
    cluster: ValkeyCluster, port: int | None, count: int, *, avoid: int | None = None
) -> list[str]:
    """``count`` subjects in different slots, on the master at ``port``
    (any master if None), none on the master at ``avoid``."""
    found: list[str] = []
    slots: set[int] = set()
    for index in range(100_000):
        subject = f"subject-{index}"
        slot = subject_slot(subject)
        owner = cluster.master_for_slot(slot).port
        if slot in slots or (port is not None and owner != port) or owner == avoid:
            continue
        found.append(subject)
        slots.add(slot)
        if len(found) == count:
            return found
    raise AssertionError("no such subjects")


def script_calls(cluster: ValkeyCluster) -> int:
    """Script runs (EVAL and EVALSHA) the masters have answered since reset."""
    total = 0
    for node in cluster.current_masters():
        with node.client() as client:
            stats = client.info("commandstats")
        for name in ("cmdstat_evalsha", "cmdstat_eval"):
            total += int(stats.get(name, {}).get("calls", 0))
    return total


def reset_stats(cluster: ValkeyCluster) -> None:
    for node in cluster.current_masters():
        with node.client() as client:
            client.config_resetstat()


@pytest.mark.cluster
async def test_subjects_of_one_master_are_decided_in_one_atomic_call(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    master = valkey_cluster.current_masters()[0]
    a, b, c = subjects_on(valkey_cluster, master.port, 3)
    await together(cluster_store, request(a, TEN), request(b, TEN), request(c, ONE))
    reset_stats(valkey_cluster)

    refused = await together(
        cluster_store, request(a, TEN), request(b, TEN), request(c, ONE)
    )

    assert [r.allowed for r in refused] == [True, True, False]
    assert script_calls(valkey_cluster) == 1  # cached by the first call: EVALSHA
    assert await remaining(cluster_store, a, TEN) == 9
    assert await remaining(cluster_store, b, TEN) == 9
    for node in valkey_cluster.current_masters():
        with node.client() as client:
            assert client.script_exists(undo_script(cross_slot=True).sha) == [False]


@pytest.mark.cluster
async def test_a_group_split_over_masters_takes_back_the_committed_part(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    first, second = valkey_cluster.current_masters()[:2]
    a, b = subjects_on(valkey_cluster, first.port, 2)
    (c,) = subjects_on(valkey_cluster, second.port, 1)
    await together(cluster_store, request(a, TEN), request(b, TEN), request(c, ONE))
    assert await remaining(cluster_store, a, TEN) == 9

    refused = await together(
        cluster_store, request(a, TEN), request(b, TEN), request(c, ONE)
    )

    assert [r.allowed for r in refused] == [True, True, False]
    assert [r.windows[0].remaining for r in refused[:2]] == [9, 9]
    assert await remaining(cluster_store, a, TEN) == 9
    assert await remaining(cluster_store, b, TEN) == 9


@pytest.mark.cluster
@pytest.mark.parametrize("algorithm", sorted(WINDOWS))
async def test_the_undo_restores_every_algorithm(
    cluster_store: RedisClusterStore,
    valkey_cluster: ValkeyCluster,
    fake_clock: FakeClock,
    algorithm: str,
) -> None:
    window = WINDOWS[algorithm]
    fake_clock.advance(30)
    first, second = valkey_cluster.current_masters()[:2]
    (a,) = subjects_on(valkey_cluster, first.port, 1)
    (full,) = subjects_on(valkey_cluster, second.port, 1)
    await together(cluster_store, request(a, window, hits=2), request(full, ONE))
    before = await remaining(cluster_store, a, window)

    refused = await together(
        cluster_store, request(a, window, hits=2), request(full, ONE)
    )

    assert before == 3
    assert refused[0].windows[0].remaining == before
    assert await remaining(cluster_store, a, window) == before


@pytest.mark.redis
async def test_a_call_of_many_groups_is_one_script_call_on_redis(
    valkey: ValkeyServer,
) -> None:
    store = RedisStore(valkey.url)
    try:
        await store.warm()
        with valkey.client() as client:
            client.config_resetstat()

        decided = await store.hit_groups(
            [
                [request("a", TEN), request("b", TEN)],
                [request("c", ONE)],
                [request("d", ONE)],
            ]
        )
    finally:
        await store.close()

    with valkey.client() as client:
        stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert "cmdstat_eval" not in stats
    assert [[r.allowed for r in group] for group in decided] == [
        [True, True],
        [True],
        [True],
    ]


@pytest.mark.cluster
async def test_the_undo_takes_back_a_counter_counted_twice(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    first, second = valkey_cluster.current_masters()[:2]
    (a,) = subjects_on(valkey_cluster, first.port, 1)
    (full,) = subjects_on(valkey_cluster, second.port, 1)
    await cluster_store.hit([request(full, ONE)])

    refused = await together(
        cluster_store, request(a, TEN), request(a, TEN), request(full, ONE)
    )

    assert [r.allowed for r in refused] == [True, True, False]
    assert await remaining(cluster_store, a, TEN) == 10
