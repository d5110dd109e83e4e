"""One SSL context per store, shared by every TLS connection it opens.

redis-py's ``SSLConnection`` builds a fresh ``ssl.SSLContext`` for each new
connection (``ssl.create_default_context()``, which loads the system CA
bundle): tens of milliseconds of CPU each, on the event loop, longer than a
whole store deadline. A burst of new connections (a cold start, a
reconnect after a failover) would stall every call in flight. The class
returned by ``shared_context_connection`` hands every connection the TLS
settings object of the first connection with the same options, and redis-py
builds the ``SSLContext`` inside it once and keeps it.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import RedisSSLContext, SSLConnection

_SETTINGS = tuple(name for name in RedisSSLContext.__slots__ if name != "context")


def shared_context_connection() -> type[SSLConnection]:
    """A new ``SSLConnection`` class whose instances share their SSL contexts.

    Each call returns a class of its own, so each store (each pool of one
    store) keeps its own contexts; within it, connections with equal TLS
    options share one.
    """
    shared: dict[tuple[str, ...], RedisSSLContext] = {}

    class SharedContextSSLConnection(SSLConnection):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            options = tuple(repr(getattr(self.ssl_context, n)) for n in _SETTINGS)
            self.ssl_context = shared.setdefault(options, self.ssl_context)

    return SharedContextSSLConnection
