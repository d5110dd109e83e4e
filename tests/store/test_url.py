"""Store URLs: which store they open, which they refuse, how they are shown."""

from __future__ import annotations

import pytest

from harness.clock import FakeClock
from ratelimit_ext.policy.model import Unit, Window
from ratelimit_ext.store.base import CounterRequest
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.store.redis import RedisStore
from ratelimit_ext.store.url import open_store, redact_url


@pytest.mark.parametrize("url", ["memory", "memory://", " memory "])
async def test_memory_urls_open_a_memory_store(url: str) -> None:
    store = open_store(url)

    assert isinstance(store, MemoryStore)
    assert store.name == "memory"


async def test_the_clock_reaches_the_memory_store(fake_clock: FakeClock) -> None:
    store = open_store("memory", clock=fake_clock)
    window = Window(1, Unit.SECOND)
    await store.hit([CounterRequest("a", (window,))])

    fake_clock.advance(1)
    [result] = await store.hit([CounterRequest("a", (window,))])

    assert result.allowed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://cache", "redis://cache:6379/0"),
        ("redis://:hunter2@cache:7000/3", "redis://:***@cache:7000/3"),
        ("redis://svc:hunter2@cache:7000", "redis://svc:***@cache:7000/0"),
        ("rediss://svc:hunter2@cache:6380/1", "rediss://svc:***@cache:6380/1"),
    ],
)
async def test_redis_urls_open_a_redis_store_shown_without_password(
    url: str, shown: str
) -> None:
    store = open_store(url)

    assert isinstance(store, RedisStore)
    assert repr(store) == f"RedisStore({shown})"
    await store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://cache:11211", "unknown scheme 'memcached'"),
        ("", "unknown scheme ''"),
        ("cache:6379", "unknown scheme 'cache'"),
        ("redis://", "no host"),
        ("redis://:hunter2@/0", "no host"),
        ("redis://cache:http/0", "port is not a number"),
        ("redis://cache:99999", "port is not a number"),
        ("redis://:hunter2@cache:6379/first", "database 'first' is not a number"),
    ],
)
def test_bad_urls_are_refused_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        open_store(url)

    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://svc:hunter2@cache:6379", "redis://svc:***@cache:6379"),
        ("rediss://svc:p%40ss@cache", "rediss://svc:***@cache"),
        ("redis://svc@cache:6379", "redis://svc@cache:6379"),
        ("redis://cache?password=hunter2&db=2", "redis://cache?password=***&db=2"),
        ("memory", "memory"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
