"""A counter store on Redis (or Valkey), shared by every replica.

One ``hit_groups`` call is one round trip and one ``EVALSHA`` of
``lua/hit.lua``, however many groups of ``CounterRequest`` it carries (each
descriptor alone, the descriptors of an all-or-nothing decision together,
and with coalescing the groups of every decision waiting at the time). The
script decides the groups in order, each all or nothing, atomically,
whatever slots their keys hash to (a standalone server has them all). The script
is called by its SHA1; after ``NOSCRIPT`` (a ``SCRIPT FLUSH``, a restart, a
failover to a fresh node) the affected calls are re-sent as ``EVAL`` with the
script's text, which loads it for the calls after them.

Keys: ``<prefix>:{<tag>}:<alg>:<unit seconds>``, one hash per window, where
``tag`` is the first 8 bytes of the subject's BLAKE2b digest in hex. All keys
of a subject share that Redis Cluster hash tag, so one script call never
crosses slots. Hash fields: fixed window ``s`` (window start) and ``c``
(count); sliding window ``s``, ``c`` and ``p`` (previous window's count);
token bucket ``t`` (tokens), ``ts`` (when they were counted) and ``x`` (when
the bucket is full again). The script sets each key's expiry in the same
call that writes it, so no key ever lives without a TTL. The script, its
calls and replies are shared with the cluster store (``script.py``).

Time: by default the script reads the server's ``TIME``, so every replica of
this service counts against one clock (needs Redis >= 5 or Valkey, where
scripts replicate their effects). With ``clock=`` the caller's time is sent
in the call instead; tests use this to be deterministic.

Retries: by default a call that fails with a connection error (typically a
pooled connection the server closed by restarting) is re-sent once on a new
connection. Timeouts are never retried: the script may have run and counted,
so the caller's failure policy decides. Every backend failure is raised as
``StoreError`` from one place, ``_translated``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError

from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.base import Clock, CounterRequest, CounterResult, Store
from ratelimit_ext.store.connections import faster
from ratelimit_ext.store.script import (
    NO_WINDOWS,
    Call,
    build_call,
    counter_keys,
    counter_script,
    has_windows,
    parse_call,
    reconnect_once,
    send_calls,
)


class RedisStore(Store):
    """Counts in Redis; see the module docstring for keys, time and errors."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 1.0,
        max_connections: int = 64,
        key_prefix: str = "rlx",
        retry: Retry | None = None,
    ) -> None:
        self._clock = clock
        self._prefix = key_prefix
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=retry or reconnect_once(),
        )
        self._pool.connection_class = faster(self._pool.connection_class)
        self._client = Redis.from_pool(self._pool)
        self._where = _describe(self._pool)
        self._secret = self._pool.connection_kwargs.get("password") or ""

    def __repr__(self) -> str:
        return f"RedisStore({self._where})"

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        now = "" if self._clock is None else repr(self._clock())
        results = [[NO_WINDOWS] * len(group) for group in groups]
        counted = [i for i, group in enumerate(groups) if has_windows(group)]
        if not counted:
            return results
        call = build_call([groups[i] for i in counted], now, self._prefix)
        with self._translated():
            (reply,) = await self._run([call])

        _, decided = parse_call(reply, [groups[i] for i in counted])
        for index, group_results in zip(counted, decided, strict=True):
            results[index] = group_results
        return results

    async def warm(self) -> None:
        """Open a connection and load the counter script."""
        with self._translated():
            await self._client.script_load(counter_script().text)

    async def reset(self, subjects: Sequence[str]) -> int:
        """Delete every counter key of ``subjects`` (one ``DEL``)."""
        keys = [key for s in subjects for key in counter_keys(s, self._prefix)]
        if not keys:
            return 0
        with self._translated():
            removed = await self._client.delete(*keys)
        return int(removed)

    async def close(self) -> None:
        with self._translated():
            await self._client.aclose()

    async def _run(self, calls: list[Call]) -> list[Any]:
        """Send all calls in one pipeline; load the script once if missing."""
        if not calls:
            return []
        replies = await send_calls(self._client, calls, where=self._where)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The one place where a backend failure becomes ``StoreError``."""
        try:
            yield
        except (RedisError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if self._secret:
                detail = detail.replace(self._secret, "***")
            raise StoreError(f"redis at {self._where} failed: {detail}") from exc


def _describe(pool: BlockingConnectionPool) -> str:
    """Where the pool connects, with its password (if any) masked."""
    kwargs = pool.connection_kwargs
    db = kwargs.get("db", 0)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={db}"
    tls = issubclass(pool.connection_class, SSLConnection)
    scheme = "rediss" if tls else "redis"
    user = kwargs.get("username") or ""
    if kwargs.get("password"):
        user += ":***"
    login = f"{user}@" if user else ""
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)

    return f"{scheme}://{login}{host}:{port}/{db}"
