"""The connection classes of the Redis stores' pools.

Two things redis-py's asyncio connections do slowly, done its faster way:

Packing commands
    The asyncio ``Connection`` packs every argument of every command in
    Python; a counter script call has a dozen arguments, and packing was the
    largest single cost of a decision in a profile. These classes pack with
    redis-py's own ``HiredisRespSerializer`` (hiredis' C packer), which its
    synchronous connections already use.
TLS contexts
    ``SSLConnection`` builds a fresh ``ssl.SSLContext`` for each new
    connection (``ssl.create_default_context()``, which loads the system CA
    bundle): tens of milliseconds of CPU each, on the event loop, longer
    than a whole store deadline, so a burst of new connections (a cold
    start, a reconnect after a failover) would stall every call in flight.
    The class ``tls_connection`` returns hands every connection the TLS
    settings object of the first one with the same options; redis-py builds
    the ``SSLContext`` inside it once and keeps it.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    RedisSSLContext,
    SSLConnection,
)
from redis.connection import HiredisRespSerializer

_TLS_SETTINGS = tuple(name for name in RedisSSLContext.__slots__ if name != "context")


class HiredisPacking:
    """Mixin: ``pack_command`` by hiredis; ``pack_commands`` builds on it."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


class PlainConnection(HiredisPacking, Connection):
    """A TCP connection that packs commands with hiredis."""


def tls_connection() -> type[SSLConnection]:
    """A new TLS connection class whose instances share their SSL contexts.

    Each call returns a class of its own, so each store keeps its own
    contexts; within it, connections with equal TLS options share one.
    """
    shared: dict[tuple[str, ...], RedisSSLContext] = {}

    class SharedContextConnection(HiredisPacking, SSLConnection):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            options = tuple(repr(getattr(self.ssl_context, n)) for n in _TLS_SETTINGS)
            self.ssl_context = shared.setdefault(options, self.ssl_context)

    return SharedContextConnection


def connection_class(tls: bool) -> type[Connection]:
    """The class for a new pool: TLS (a class of its own) or plain TCP."""
    return tls_connection() if tls else PlainConnection


def faster(chosen: type[AbstractConnection]) -> type[AbstractConnection]:
    """The class to use instead of the one redis-py chose from a URL.

    Unix-socket connections keep redis-py's class.
    """
    if issubclass(chosen, SSLConnection):
        return tls_connection()
    if chosen is Connection:
        return PlainConnection
    return chosen
