"""Choose a store from a URL, and show URLs without their secrets.

Accepted: ``memory`` (or ``memory://``), ``redis://[user:pass@]host[:port][/db]``
and ``rediss://...`` (TLS), and for Redis Cluster
``redis+cluster://[user:pass@]host1:port1,host2:port2,...`` (seed nodes; the
others are discovered) and ``rediss+cluster://...`` (TLS). Query options of
Redis URLs are passed on to redis-py. Always log a store URL through
``redact_url``.
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from ratelimit_ext.store.base import Clock, Store
from ratelimit_ext.store.cluster import SCHEMES as CLUSTER_SCHEMES
from ratelimit_ext.store.cluster import RedisClusterStore
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.store.redis import RedisStore

_REDIS_SCHEMES = ("redis", "rediss")
_SECRET_QUERY_KEYS = frozenset({"password"})


def open_store(url: str, *, clock: Clock | None = None) -> Store:
    """Build the store named by ``url``; raises ``ValueError`` for a bad URL.

    ``clock`` replaces the store's time source (tests); by default memory
    uses this process's clock and Redis uses the server's ``TIME``.
    """
    text = url.strip()
    if text in ("memory", "memory://"):
        return MemoryStore() if clock is None else MemoryStore(clock)
    parts = urlsplit(text)
    if parts.scheme in CLUSTER_SCHEMES:
        return RedisClusterStore(text, clock=clock)
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"store URL {redact_url(text)!r}: unknown scheme {parts.scheme!r}; "
            "expected 'memory', 'redis://host:port[/db]', 'rediss://...' or "
            "'redis+cluster://host1:port1,host2:port2,...'"
        )
    _check_redis_url(parts, redact_url(text))

    return RedisStore(text, clock=clock)


def redact_url(url: str) -> str:
    """``url`` with its password (in the user info or the query) as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        login, _, host = netloc.rpartition("@")
        user = login.partition(":")[0]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k in _SECRET_QUERY_KEYS else v) for k, v in pairs],
            safe="*",
        )

    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _check_redis_url(parts: SplitResult, shown: str) -> None:
    if not parts.hostname:
        raise ValueError(f"store URL {shown!r}: no host")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        message = f"store URL {shown!r}: the port is not a number from 0 to 65535"
        raise ValueError(message) from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"store URL {shown!r}: the database {db!r} is not a number")
