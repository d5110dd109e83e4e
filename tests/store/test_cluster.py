"""The Redis Cluster store: routing, parallel pipelines, redirects and failover.

The algorithms themselves run on the cluster through the ``store`` fixture of
``test_stores.py``. Tests here that stop, kill or fail over nodes start a
cluster of their own, so the session's cluster is never disturbed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.connection
from redis.crc import key_slot

from harness.clock import FakeClock
from harness.cluster import ClusterNodeServer, ValkeyCluster
from harness.ports import LOOPBACK
from ratelimit_ext.errors import StoreError
from ratelimit_ext.policy.model import Algorithm, Unit, Window
from ratelimit_ext.store.base import (
    CounterRequest,
    CounterResult,
    Resettable,
    WindowResult,
)
from ratelimit_ext.store.cluster import (
    ABANDONED_IN_A_ROW,
    RedisClusterStore,
    parse_cluster_url,
)
from ratelimit_ext.store.script import counter_script, window_keys
from ratelimit_ext.store.url import open_store

PASSWORD = "cluster-pa55-never-shown"
SLACK = 0.5
"""Seconds a busy test machine may add to a store timeout before a call ends."""
MINUTE = Window(1000, Unit.MINUTE)
DAY = Window(5000, Unit.DAY)


# --- helpers -------------------------------------------------------------------


def keys_of(subject: str, *windows: Window) -> list[str]:
    return window_keys(CounterRequest(subject, windows), "rlx")


def slot_of(subject: str) -> int:
    return key_slot(keys_of(subject, MINUTE)[0].encode())


def subjects_on(cluster: ValkeyCluster, per_master: int) -> dict[int, list[str]]:
    """``per_master`` subjects owned by each master, by the master's port."""
    masters = {node.port for node in cluster.current_masters()}
    found: dict[int, list[str]] = {port: [] for port in masters}
    index = 0
    while any(len(subjects) < per_master for subjects in found.values()):
        subject = f"tenant|user={index}"
        owner = cluster.master_for_slot(slot_of(subject)).port
        if len(found[owner]) < per_master:
            found[owner].append(subject)
        index += 1
    return found


def stat(node: ClusterNodeServer, section: str, name: str, field: str) -> int:
    """A counter from ``INFO commandstats``/``errorstats``; 0 when absent."""
    value = node.info(section).get(name)
    if not isinstance(value, dict):
        return 0
    return int(value.get(field, 0))


async def hit_one(
    store: RedisClusterStore, subject: str, *windows: Window
) -> CounterResult:
    [result] = await store.hit([CounterRequest(subject, windows or (MINUTE,))])
    return result


@pytest.fixture
def own_cluster() -> Iterator[ValkeyCluster]:
    """A password-protected cluster of this test's own, free to break."""
    with ValkeyCluster(password=PASSWORD) as cluster:
        yield cluster


# --- keys and routing ------------------------------------------------------------


@pytest.mark.cluster
async def test_the_keys_of_one_subject_land_in_one_slot_with_a_ttl(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    windows = (
        MINUTE,
        Window(5, Unit.HOUR, Algorithm.SLIDING_WINDOW),
        Window(4, Unit.MINUTE, Algorithm.TOKEN_BUCKET),  # full again in 15 s
        DAY,
    )
    await cluster_store.hit([CounterRequest("tenant|user=42", windows)])

    owner = valkey_cluster.master_for_slot(slot_of("tenant|user=42"))
    with owner.client() as client:
        ttls = {key: client.pttl(key) for key in client.scan_iter(count=1000)}

    assert set(ttls) == {key.encode() for key in keys_of("tenant|user=42", *windows)}
    assert len({key_slot(key) for key in ttls}) == 1
    assert all(ttl > 0 for ttl in ttls.values())


@pytest.mark.cluster
async def test_one_hit_sends_one_pipeline_to_each_master_all_at_once(
    cluster_store: RedisClusterStore,
    valkey_cluster: ValkeyCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_master = subjects_on(valkey_cluster, per_master=3)
    requests = [
        CounterRequest(subject, (MINUTE, DAY))
        for subjects in by_master.values()
        for subject in subjects
    ]
    await cluster_store.hit(requests)  # connects and loads the script everywhere
    masters = valkey_cluster.current_masters()
    for node in masters:
        with node.client() as client:
            client.config_resetstat()
    events = record_sends_and_replies(monkeypatch)

    results = await cluster_store.hit(requests)

    sends = [port for kind, port in events if kind == "send"]
    assert Counter(sends) == {port: 1 for port in by_master}  # one pipeline each
    first_reply = next(i for i, (kind, _) in enumerate(events) if kind == "reply")
    assert first_reply == len(sends)  # every pipeline left before any answer came
    assert all(result.allowed for result in results)
    for node in masters:
        calls = stat(node, "commandstats", "cmdstat_evalsha", "calls")
        assert calls == 1  # one script call decides all 3 subjects of a master
        errors = {name.removeprefix("errorstat_") for name in node.info("errorstats")}
        assert errors <= {"ERR"}  # ERR: redis-py's CLIENT SETINFO on connecting


def record_sends_and_replies(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[str, int]]:
    """Log each packed send and each reply read, with the server's port."""
    events: list[tuple[str, int]] = []
    connection = redis.asyncio.connection.AbstractConnection
    send, read = connection.send_packed_command, connection.read_response

    async def sending(self: Any, command: Any, check_health: bool = True) -> None:
        events.append(("send", self.port))
        await send(self, command, check_health)

    async def reading(self: Any, *args: Any, **kwargs: Any) -> Any:
        reply = await read(self, *args, **kwargs)
        events.append(("reply", self.port))
        return reply

    monkeypatch.setattr(connection, "send_packed_command", sending)
    monkeypatch.setattr(connection, "read_response", reading)
    return events


@pytest.mark.cluster
async def test_concurrent_hits_across_every_master_admit_exactly_the_limit(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    subjects = [subjects[0] for subjects in subjects_on(valkey_cluster, 1).values()]
    limit = Window(40, Unit.MINUTE, Algorithm.SLIDING_WINDOW)
    requests = [CounterRequest(subject, (limit, DAY)) for subject in subjects]
    await cluster_store.hit([CounterRequest(s, (limit,), hits=0) for s in subjects])

    batches = await asyncio.gather(*(cluster_store.hit(requests) for _ in range(150)))

    admitted = [sum(batch[i].allowed for batch in batches) for i in range(3)]
    assert admitted == [40, 40, 40]


@pytest.mark.cluster
async def test_reset_forgets_the_counters_of_subjects_on_every_master(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    subjects = [subjects[0] for subjects in subjects_on(valkey_cluster, 1).values()]
    requests = [CounterRequest(s, (Window(1, Unit.MINUTE), DAY)) for s in subjects]
    await cluster_store.hit(requests)

    removed = await cluster_store.reset([*subjects, "never-seen"])
    again = await cluster_store.hit(requests)

    assert isinstance(cluster_store, Resettable)
    assert removed == 3 * 2
    assert all(result.allowed for result in again)


# --- scripts and redirects ---------------------------------------------------------


@pytest.mark.cluster
async def test_the_script_is_sent_again_after_a_script_flush_on_every_node(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    subjects = [subjects[0] for subjects in subjects_on(valkey_cluster, 1).values()]
    requests = [
        CounterRequest(subject, (Window(3, Unit.MINUTE),)) for subject in subjects
    ]
    await cluster_store.hit(requests)
    for node in valkey_cluster.nodes:
        with node.client() as client:
            client.script_flush()

    results = await cluster_store.hit(requests)

    assert [r.windows for r in results] == [(WindowResult(True, 1, 60.0),)] * 3
    for node in valkey_cluster.current_masters():
        with node.client() as client:
            assert client.script_exists(counter_script().sha) == [True]


@pytest.mark.cluster
async def test_an_empty_slot_in_migration_is_followed_by_ask_then_moved(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    cluster = valkey_cluster
    by_master = subjects_on(cluster, 1)
    subject = next(iter(by_master.values()))[0]
    slot = slot_of(subject)
    source = cluster.master_for_slot(slot)
    target = next(n for n in cluster.current_masters() if n is not source)
    await cluster_store.hit(  # the slot map and connections, before the move
        [CounterRequest(s[0], (MINUTE,)) for s in by_master.values() if s[0] != subject]
    )
    with source.client() as client:
        client.config_resetstat()
    try:
        cluster.begin_slot_migration(slot, source, target)
        asked = [await hit_one(cluster_store, subject) for _ in range(2)]
        cluster.finish_slot_migration(slot, target)
        moved = [await hit_one(cluster_store, subject) for _ in range(2)]
    finally:
        give_back(cluster, slot, source)

    remaining = [r.windows[0].remaining for r in asked + moved]
    assert remaining == [999, 998, 997, 996]  # all four counted on the target
    assert stat(source, "errorstats", "errorstat_ASK", "count") == 2
    assert stat(source, "errorstats", "errorstat_MOVED", "count") == 1  # then direct


@pytest.mark.cluster
async def test_a_slot_migrating_with_its_counters_keeps_counting(
    cluster_store: RedisClusterStore, valkey_cluster: ValkeyCluster
) -> None:
    cluster = valkey_cluster
    subject = next(iter(subjects_on(cluster, 1).values()))[0]
    slot = slot_of(subject)
    source = cluster.master_for_slot(slot)
    target = next(n for n in cluster.current_masters() if n is not source)
    minute_key, day_key = keys_of(subject, MINUTE, DAY)
    before = [await hit_one(cluster_store, subject, MINUTE, DAY) for _ in range(2)]
    try:
        cluster.begin_slot_migration(slot, source, target)
        cluster.migrate_key(minute_key, source, target)
        with pytest.raises(StoreError) as split:  # one key here, one there
            await hit_one(cluster_store, subject, MINUTE, DAY)
        cluster.migrate_key(day_key, source, target)
        asked = await hit_one(cluster_store, subject, MINUTE, DAY)
        cluster.finish_slot_migration(slot, target)
        moved = await hit_one(cluster_store, subject, MINUTE, DAY)
    finally:
        give_back(cluster, slot, source)

    assert isinstance(split.value.__cause__, redis.exceptions.TryAgainError)
    counts = [r.windows[1].remaining for r in [*before, asked, moved]]
    assert counts == [4999, 4998, 4997, 4996]


def give_back(cluster: ValkeyCluster, slot: int, owner: ClusterNodeServer) -> None:
    """Return an emptied ``slot`` to ``owner``, wherever the test left it."""
    cluster.flushall()
    current = cluster.master_for_slot(slot)
    if current is not owner:
        cluster.begin_slot_migration(slot, current, owner)
        cluster.finish_slot_migration(slot, owner)
    for node in cluster.current_masters():  # and cancel a half-done migration
        with node.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "STABLE")


# --- failures ------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.ClusterDownError("The cluster is down"),
    ],
    ids=["READONLY", "CLUSTERDOWN"],
)
async def test_a_stale_map_error_raises_store_error_and_refreshes_the_map(
    cluster_store: RedisClusterStore,
    valkey_cluster: ValkeyCluster,
    monkeypatch: pytest.MonkeyPatch,
    error: redis.exceptions.ResponseError,
) -> None:
    """A real cluster answers MOVED, not these, to our clients; so they are faked."""
    await hit_one(cluster_store, "a")
    for node in valkey_cluster.nodes:
        with node.client() as client:
            client.config_resetstat()

    async def answering(*args: Any, **kwargs: Any) -> list[Any]:
        return [error]

    with monkeypatch.context() as patched:
        patched.setattr("ratelimit_ext.store.cluster.send_calls", answering)
        with pytest.raises(StoreError) as caught:
            await hit_one(cluster_store, "a")
    await asyncio.sleep(0.1)  # the refresh runs in the background

    assert caught.value.__cause__ is error
    slot_queries = [
        stat(node, "commandstats", "cmdstat_cluster|slots", "calls")
        for node in valkey_cluster.nodes
    ]
    assert sum(slot_queries) == 1
    assert (await hit_one(cluster_store, "a")).allowed


@pytest.mark.cluster
async def test_a_silent_seed_raises_store_error_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind((LOOPBACK, 0))
        silent.listen()
        port = silent.getsockname()[1]
        store = RedisClusterStore(f"redis+cluster://{LOOPBACK}:{port}", timeout=0.2)
        started = time.monotonic()
        with pytest.raises(StoreError, match="redis cluster at redis"):
            await hit_one(store, "a")
        elapsed = time.monotonic() - started
        await store.close()

    assert elapsed < 0.5


@pytest.mark.cluster
async def test_failover_under_load_recovers_without_a_restart(
    own_cluster: ValkeyCluster, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ratelimit_ext")
    by_master = subjects_on(own_cluster, 1)
    subjects = [subjects[0] for subjects in by_master.values()]
    victim = own_cluster.master_for_slot(slot_of(subjects[0]))
    store = RedisClusterStore(own_cluster.url, clock=fake_clock, timeout=0.3)
    requests = [CounterRequest(subject, (MINUTE, DAY)) for subject in subjects]
    log: list[tuple[float, float, str]] = []  # start, duration, outcome

    async def hit_until(deadline: float, successes_after_kill: int) -> None:
        streak = 0
        while time.monotonic() < deadline and streak < successes_after_kill:
            started = time.monotonic()
            try:
                await store.hit(requests)
                outcome = "ok"
            except StoreError as exc:
                outcome = str(exc)
            log.append((started, time.monotonic() - started, outcome))
            streak = streak + 1 if outcome == "ok" and not victim.running else 0
            await asyncio.sleep(0.005)

    try:
        assert all(r.allowed for r in await store.hit(requests))
        loop = asyncio.create_task(hit_until(time.monotonic() + 20, 50))
        await asyncio.sleep(0.2)
        killed_at = time.monotonic()
        own_cluster.kill(victim)
        await loop
        repr_text = repr(store)
    finally:
        await store.close()

    after_kill = [entry for entry in log if entry[0] >= killed_at]
    recovered = next(start for start, _, outcome in after_kill if outcome == "ok")
    assert all(outcome == "ok" for _, _, outcome in after_kill[-50:])
    assert recovered - killed_at < 15  # failover (~2 s) plus a refresh
    assert max(duration for _, duration, _ in log) < 0.3 + SLACK  # never a hang
    assert PASSWORD not in repr_text + caplog.text + "".join(e[2] for e in log)
    assert "masters are now" in caplog.text


@pytest.mark.cluster
async def test_a_frozen_master_is_failed_over_and_left_behind(
    own_cluster: ValkeyCluster, fake_clock: FakeClock
) -> None:
    subject = next(iter(subjects_on(own_cluster, 1).values()))[0]
    frozen = own_cluster.master_for_slot(slot_of(subject))
    store = RedisClusterStore(own_cluster.url, clock=fake_clock, timeout=0.1)
    durations: list[float] = []
    streak = 0
    try:
        await hit_one(store, subject)
        frozen.pause()  # connections still open; nothing answers, nothing fails
        deadline = time.monotonic() + 15
        while streak < 20 and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                await hit_one(store, subject)
                streak += 1
            except StoreError:
                streak = 0
            durations.append(time.monotonic() - started)
            await asyncio.sleep(0.01)
    finally:
        frozen.resume()
        await store.close()

    assert streak == 20  # the replica took over, and the store found it
    assert max(durations) < 0.1 + SLACK


@pytest.mark.cluster
async def test_a_paused_master_times_out_and_a_demoted_master_redirects(
    own_cluster: ValkeyCluster, fake_clock: FakeClock
) -> None:
    subject = next(iter(subjects_on(own_cluster, 1).values()))[0]
    master = own_cluster.master_for_slot(slot_of(subject))
    [replica] = own_cluster.replicas_of(master)
    store = RedisClusterStore(own_cluster.url, clock=fake_clock, timeout=0.3)
    try:
        first = await hit_one(store, subject)
        master.pause()  # shorter than the node timeout: no failover
        started = time.monotonic()
        with pytest.raises(StoreError):  # our timeout, or the socket's
            await hit_one(store, subject)
        elapsed = time.monotonic() - started
        master.resume()
        await asyncio.sleep(0.05)
        after_pause = await hit_one(store, subject)

        with replica.client() as client:  # the replica takes over, gracefully
            client.execute_command("CLUSTER FAILOVER")
        own_cluster.wait_for_failover(master, slot_of(subject))
        after_failover = [await hit_one(store, subject) for _ in range(2)]

        own_cluster.kill(replica)  # the new master dies; the old one is back
        own_cluster.wait_for_failover(replica, slot_of(subject))
        after_kill = await hits_until_ok(store, subject, within=10.0)
        own_cluster.restart(replica)
        own_cluster.wait_healthy()
        after_restart = await hit_one(store, subject)
    finally:
        master.resume()
        await store.close()

    assert elapsed < 0.3 + SLACK
    assert stat(master, "errorstats", "errorstat_MOVED", "count") >= 1
    # the timed-out call ran when the master woke up: timeouts are not re-sent
    assert [r.windows[0].remaining for r in [first, after_pause]] == [999, 997]
    assert [r.windows[0].remaining for r in after_failover] == [996, 995]
    assert after_kill.allowed and after_restart.allowed


async def hits_until_ok(
    store: RedisClusterStore, subject: str, within: float
) -> CounterResult:
    deadline = time.monotonic() + within
    while True:
        try:
            return await hit_one(store, subject)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# --- URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "seeds", "tls", "shown"),
    [
        (
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
            (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
            False,
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        ),
        (
            "rediss+cluster://svc:hunter2@cache-0,cache-1:7000/0",
            (("cache-0", 6379), ("cache-1", 7000)),
            True,
            "rediss+cluster://svc:***@cache-0,cache-1:7000/0",
        ),
        (
            "redis+cluster://:p%40ss@[::1]:7000?password=hunter2",
            (("::1", 7000),),
            False,
            "redis+cluster://:***@[::1]:7000",
        ),
    ],
)
def test_cluster_urls_name_seeds_and_hide_the_password(
    url: str, seeds: tuple[tuple[str, int], ...], tls: bool, shown: str
) -> None:
    address = parse_cluster_url(url)

    assert (address.seeds, address.tls, address.shown) == (seeds, tls, shown)


def test_open_store_opens_a_cluster_store_shown_without_password() -> None:
    store = open_store("redis+cluster://svc:hunter2@cache-0:7000,cache-1:7000")

    assert isinstance(store, RedisClusterStore)
    assert (
        repr(store)
        == "RedisClusterStore(redis+cluster://svc:***@cache-0:7000,cache-1:7000)"
    )
    assert store.name == "redis-cluster"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "a seed node has no host"),
        ("redis+cluster://:hunter2@a:7000,,b:7000", "a seed node has no host"),
        ("redis+cluster://:hunter2@a:http", "the port of 'a:http' is not a number"),
        ("redis+cluster://:hunter2@a:7000/1", "a cluster has only database 0"),
        ("redis+cluster://a:7000?db=2", "a cluster has only database 0"),
        (
            "redis+cluster://:hunter2@a:7000?colour=blue",
            "unsupported connection option",
        ),
    ],
)
def test_bad_cluster_urls_are_refused_with_a_clear_message(
    url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        open_store(url)

    assert "hunter2" not in str(caught.value)


def slot_map_queries(cluster: ValkeyCluster) -> int:
    return sum(
        stat(node, "commandstats", "cmdstat_cluster|slots", "calls")
        for node in cluster.running_nodes
    )


async def abandon_one_call(
    store: RedisClusterStore, master: ClusterNodeServer, subject: str
) -> None:
    """One call the caller gives up on while the master does not answer."""
    master.pause()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(hit_one(store, subject), timeout=0.05)
    finally:
        master.resume()


@pytest.mark.cluster
async def test_calls_abandoned_now_and_then_leave_the_slot_map_alone(
    own_cluster: ValkeyCluster, fake_clock: FakeClock
) -> None:
    """A busy server gives up on a call now and then; only a streak of them
    to one node (a frozen node) is worth rebuilding the map of 16384 slots."""
    subject = next(iter(subjects_on(own_cluster, 1).values()))[0]
    master = own_cluster.master_for_slot(slot_of(subject))
    store = RedisClusterStore(own_cluster.url, clock=fake_clock, timeout=5.0)
    try:
        await hit_one(store, subject)
        for node in own_cluster.running_nodes:
            with node.client() as client:
                client.config_resetstat()
        for _ in range(ABANDONED_IN_A_ROW + 1):
            await abandon_one_call(store, master, subject)
            await hit_one(store, subject)  # answered: the streak ends
        await asyncio.sleep(0.3)
        sporadic = slot_map_queries(own_cluster)

        for _ in range(ABANDONED_IN_A_ROW):
            await abandon_one_call(store, master, subject)
        await asyncio.sleep(0.3)
        streak = slot_map_queries(own_cluster)
    finally:
        await store.close()

    assert sporadic == 0
    assert streak >= 1
