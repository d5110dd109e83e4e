"""A counter store on Redis (or Valkey), shared by every replica.

One ``hit`` call is one round trip: a non-transactional pipeline holding one
``EVALSHA`` of ``lua/hit.lua`` per ``CounterRequest``. The script checks every
window of its subject and commits all of them or none, atomically. The script
is called by its SHA1; after ``NOSCRIPT`` (a ``SCRIPT FLUSH``, a restart, a
failover to a fresh node) it is loaded and the affected calls are re-sent.

Keys: ``<prefix>:{<tag>}:<alg>:<unit seconds>``, one hash per window, where
``tag`` is the first 8 bytes of the subject's BLAKE2b digest in hex. All keys
of a subject share that Redis Cluster hash tag, so one script call never
crosses slots. Hash fields: fixed window ``s`` (window start) and ``c``
(count); sliding window ``s``, ``c`` and ``p`` (previous window's count);
token bucket ``t`` (tokens), ``ts`` (when they were counted) and ``x`` (when
the bucket is full again). The script sets each key's expiry in the same
call that writes it, so no key ever lives without a TTL.

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

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from ratelimit_ext.errors import StoreError
from ratelimit_ext.policy.model import Algorithm, Window
from ratelimit_ext.store.base import Clock, CounterRequest, CounterResult, WindowResult

logger = logging.getLogger(__name__)

_ALGORITHM_CODES = {
    Algorithm.FIXED_WINDOW: "fw",
    Algorithm.SLIDING_WINDOW: "sw",
    Algorithm.TOKEN_BUCKET: "tb",
}

_Call = tuple[list[str], list[str]]
"""The KEYS and ARGV of one script call."""

_NO_WINDOWS = CounterResult(True, ())
"""The result of a request without windows: nothing to count, admitted."""


class RedisStore:
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
        self._script = _script_text()
        self._sha = hashlib.sha1(self._script.encode()).hexdigest()
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=retry or _reconnect_once(),
        )
        self._client = Redis.from_pool(self._pool)
        self._where = _describe(self._pool)
        self._secret = self._pool.connection_kwargs.get("password") or ""

    def __repr__(self) -> str:
        return f"RedisStore({self._where})"

    async def hit(self, requests: Sequence[CounterRequest]) -> list[CounterResult]:
        now = "" if self._clock is None else repr(self._clock())
        calls = [self._call(request, now) for request in requests]
        pending = [i for i, call in enumerate(calls) if call[0]]
        with self._translated():
            replies = await self._run([calls[i] for i in pending])

        results = [_NO_WINDOWS] * len(requests)
        for index, reply in zip(pending, replies, strict=True):
            results[index] = _result(reply)
        return results

    async def close(self) -> None:
        with self._translated():
            await self._client.aclose()

    def _call(self, request: CounterRequest, now: str) -> _Call:
        tag = hashlib.blake2b(request.subject.encode(), digest_size=8).hexdigest()
        keys: list[str] = []
        args = [now, str(request.hits)]
        for window in request.windows:
            suffix, window_args = _window_parts(window)
            keys.append(f"{self._prefix}:{{{tag}}}:{suffix}")
            args.extend(window_args)
        return keys, args

    async def _run(self, calls: list[_Call]) -> list[Any]:
        """Send all calls in one pipeline; load the script once if missing."""
        if not calls:
            return []
        replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._load_script()
            retried = await self._pipeline([calls[i] for i in missing])
            for index, reply in zip(missing, retried, strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _load_script(self) -> None:
        loaded = await self._client.script_load(self._script)
        if _text(loaded) != self._sha:
            raise StoreError(f"redis at {self._where} returned an unexpected SHA1")
        logger.info("loaded the counter script into redis at %s", self._where)

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


def _reconnect_once() -> Retry:
    """Re-send once after a connection error, at once; never after a timeout."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


@lru_cache(maxsize=4096)
def _window_parts(window: Window) -> tuple[str, tuple[str, str, str, str]]:
    """The key suffix and the script arguments of one window, computed once."""
    code = _ALGORITHM_CODES[window.algorithm]
    unit = window.unit.seconds
    args = (code, str(window.limit), str(unit), str(window.capacity))
    return f"{code}:{unit}", args


def _result(reply: list[Any]) -> CounterResult:
    windows = tuple(
        WindowResult(bool(reply[i]), int(reply[i + 1]), float(_text(reply[i + 2])))
        for i in range(1, len(reply), 3)
    )
    return CounterResult(bool(reply[0]), windows)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@lru_cache(maxsize=1)
def _script_text() -> str:
    return resources.files("ratelimit_ext.store").joinpath("lua/hit.lua").read_text()


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
