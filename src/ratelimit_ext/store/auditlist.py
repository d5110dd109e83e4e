"""The admin audit trail kept in the store: one capped list of JSON lines.

Every server sharing a Redis or Redis Cluster store appends its audit
records to the same list, ``<prefix>:{audit}:log``, so any replica's
``ListAudit`` shows what every replica changed. One append is ``RPUSH`` then
``LTRIM`` to the newest ``keep`` lines, both in one call of
``lua/audit_append.lua`` (atomic like ``MULTI``/``EXEC``, one round trip,
called by SHA and loaded on ``NOSCRIPT``): the list never holds more. The key
carries its own hash tag, so on a cluster it lives in one slot.

Why a script rather than a ``MULTI``/``EXEC`` pipeline: redis-py's asyncio
cluster client queues each command of a transaction by running
``asyncio.run`` in a new thread and joining it, which blocks the event loop
the data path shares, and rediscovers the slot map on that foreign loop when
it must (its connections then fail on ours). A script is one ordinary keyed
command on both clients.

This is the admin path, not the data path: its own small connection pool,
no circuit breaker, each call bounded by ``timeout``. A call is never
retried (an ``RPUSH`` that timed out may have been applied); after a
connection error on a cluster the next call rediscovers the slot map.
Every backend failure is raised as ``StoreError``, password masked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.cluster import SCHEMES as CLUSTER_SCHEMES
from ratelimit_ext.store.cluster import parse_cluster_url
from ratelimit_ext.store.url import redact_url

AUDIT_KEY = "{audit}:log"
"""The list's key after the store's key prefix; ``{audit}`` is its hash tag."""

KEEP = 10_000
"""Records kept in the list; older ones are trimmed away."""


class StoredAuditList:
    """The capped audit list in a Redis or Redis Cluster store."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        where: str,
        *,
        secret: str = "",
        keep: int = KEEP,
        timeout: float = 1.0,
        key_prefix: str = "rlx",
    ) -> None:
        if keep < 1:
            raise ValueError("an audit list keeps at least one record")
        self.key = f"{key_prefix}:{AUDIT_KEY}"
        self._client = client
        self._append = client.register_script(_append_script())
        self._where = where
        self._secret = secret
        self._keep = keep
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"StoredAuditList({self._where})"

    async def append(self, line: str) -> None:
        """Add one record; the list keeps the newest ``keep``."""
        with self._translated("append to"):
            async with asyncio.timeout(self._timeout):
                await self._append(keys=[self.key], args=[line, self._keep])

    async def newest(self, limit: int) -> list[str]:
        """The last ``limit`` records, oldest first."""
        if limit < 1:
            return []
        with self._translated("read"):
            async with asyncio.timeout(self._timeout):
                lines = await self._client.lrange(self.key, -limit, -1)

        return [_text(line) for line in lines]

    async def close(self) -> None:
        with self._translated("close"):
            await self._client.aclose()

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:
            message = f"no answer within {self._timeout} s"
            raise StoreError(
                f"cannot {action} the audit list at {self._where}: {message}"
            ) from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if self._secret:
                detail = detail.replace(self._secret, "***")
            message = f"cannot {action} the audit list at {self._where}: {detail}"
            raise StoreError(message) from exc


def open_audit_list(
    url: str, *, keep: int = KEEP, timeout: float = 1.0
) -> StoredAuditList | None:
    """The audit list in the store named by ``url``; ``None`` for ``memory``.

    ``url`` is the counter store's URL (already checked when the store was
    opened); the list gets connections of its own.
    """
    text = url.strip()
    scheme = urlsplit(text).scheme
    no_retry = Retry(NoBackoff(), 0)
    if scheme in CLUSTER_SCHEMES:
        address = parse_cluster_url(text)
        options = {
            **address.options,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
            require_full_coverage=False,
            retry=no_retry,
            ssl=address.tls,
            **options,
        )
        secret = str(address.options.get("password") or "")
        return StoredAuditList(
            cluster, address.shown, secret=secret, keep=keep, timeout=timeout
        )
    if scheme not in ("redis", "rediss"):
        return None
    client = Redis.from_url(
        text, retry=no_retry, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    secret = unquote(urlsplit(text).password or "")
    return StoredAuditList(
        client, redact_url(text), secret=secret, keep=keep, timeout=timeout
    )


@lru_cache(maxsize=1)
def _append_script() -> str:
    lua = resources.files("ratelimit_ext.store").joinpath("lua/audit_append.lua")

    return lua.read_text()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
