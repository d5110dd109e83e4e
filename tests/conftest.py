"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from harness.clock import FakeClock
from harness.valkey import ValkeyServer
from ratelimit_ext.store.base import Store
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
]


@pytest.fixture(params=STORE_BACKENDS)
async def store(
    request: pytest.FixtureRequest, fake_clock: FakeClock
) -> AsyncIterator[Store]:
    """Every store backend, each reading time from ``fake_clock``."""
    if request.param == "memory":
        yield MemoryStore(fake_clock)
        return
    server: ValkeyServer = request.getfixturevalue("valkey")
    server.flushall()
    redis_store = RedisStore(server.url, clock=fake_clock)
    yield redis_store
    await redis_store.close()
