"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from harness.clock import FakeClock
from harness.cluster import ValkeyCluster
from harness.valkey import ValkeyServer
from ratelimit_ext.store.base import Store
from ratelimit_ext.store.cluster import RedisClusterStore
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.store.redis import RedisStore

# --- counter stores ----------------------------------------------------------


@pytest.fixture(scope="session")
def valkey() -> Iterator[ValkeyServer]:
    """One real valkey-server for the session, flushed before each test using it."""
    with ValkeyServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _flush_valkey(request: pytest.FixtureRequest) -> None:
    """Give every test that uses ``valkey`` an empty server."""
    if "valkey" in request.fixturenames:
        request.getfixturevalue("valkey").flushall()


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock at a day boundary that moves only when the test advances it."""
    return FakeClock()


STORE_BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]


@pytest.fixture(params=STORE_BACKENDS)
async def store(
    request: pytest.FixtureRequest, fake_clock: FakeClock
) -> AsyncIterator[Store]:
    """Every store backend, each reading time from ``fake_clock``."""
    if request.param == "memory":
        yield MemoryStore(fake_clock)
        return
    if request.param == "cluster":
        cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        cluster.flushall()
        # A generous timeout: these tests check answers, on a machine that may
        # be busy; test_cluster.py tests the timeouts.
        cluster_store = RedisClusterStore(cluster.url, clock=fake_clock, timeout=5.0)
        yield cluster_store
        await cluster_store.close()
        return
    server: ValkeyServer = request.getfixturevalue("valkey")
    server.flushall()
    redis_store = RedisStore(server.url, clock=fake_clock)
    yield redis_store
    await redis_store.close()


# --- redis cluster -------------------------------------------------------------


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyCluster]:
    """One real 3-master, 3-replica cluster for the session, flushed per test.

    Tests that kill, restart or fail over nodes use a cluster of their own.
    """
    with ValkeyCluster() as cluster:
        yield cluster


@pytest.fixture
async def cluster_store(
    valkey_cluster: ValkeyCluster, fake_clock: FakeClock
) -> AsyncIterator[RedisClusterStore]:
    """A store on the session's cluster; its timeout is not what is tested."""
    store = RedisClusterStore(valkey_cluster.url, clock=fake_clock, timeout=5.0)
    yield store
    await store.close()


@pytest.fixture(autouse=True)
def _flush_valkey_cluster(request: pytest.FixtureRequest) -> None:
    """Give every test that uses ``valkey_cluster`` an empty cluster."""
    if "valkey_cluster" in request.fixturenames:
        request.getfixturevalue("valkey_cluster").flushall()
