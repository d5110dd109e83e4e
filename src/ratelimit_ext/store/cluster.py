"""A counter store on Redis Cluster (or a Valkey cluster), shared by every replica.

URL: ``redis+cluster://[user:pass@]host1:port1,host2:port2,...`` or
``rediss+cluster://...`` for TLS. The hosts are seeds only: which master owns
which of the 16384 slots is discovered from them by the ``NodesManager`` of
redis-py's ``RedisCluster`` and refreshed when it changes.

One ``hit_groups`` call: each group of requests is split into parts, one per
master owning some of its subjects, and every master gets one ``EVALSHA`` of
the counter script deciding all the parts bound for it, with the keys of
``RedisStore`` (``script.py``). All keys of a subject share one hash tag; a
call over several slots of one master declares the keys of its first slot
and names the others in its arguments, under the script flag
``allow-cross-slot-keys`` (Redis 7, Valkey): still atomic, still one call.
The masters' calls run concurrently (``asyncio.gather``): a ``hit_groups``
costs one round trip to the slowest master involved, never one per key or
one master after another.

A group split over several masters cannot be atomic. Each master decides
its part all or nothing; if a binding request of one part was refused, the
parts that committed are taken back with ``lua/undo.lua`` in one more round
(run to its end even if the caller stops waiting; a failure is logged). In
between, those hits are visible to other requests: an all-or-nothing group
split over masters can make others refuse early, never admit more.
``reset`` (the admin API's ResetCounters) works the same way: one ``DEL`` per
subject, one pipeline per master.

Failures, per reply or per master pipeline:

``NOSCRIPT``
    the first calls to a node wait for one shared ``SCRIPT LOAD``; calls
    answered ``NOSCRIPT`` later (a restarted node, ``SCRIPT FLUSH``) are
    re-sent to it as ``EVAL`` with the script's text (``send_calls``).
``MOVED``
    the calls are re-sent to the named master within the same ``hit``; the
    slot is patched in redis-py's map and a full refresh is started.
``ASK``
    the calls are re-sent to the named node, each after ``ASKING``; the map
    stays (the slot is being migrated).
``TRYAGAIN``
    the calls are re-sent to the same node after a short pause.
Connection errors, timeouts, ``CLUSTERDOWN``, ``READONLY``, uncovered slots
    ``StoreError`` for this call, and a refresh of the slot map in the
    background (one at a time, at most one per ``REFRESH_INTERVAL``). A
    pipeline abandoned by a timeout or by the caller's cancellation also
    starts one, once a node has had ``ABANDONED_IN_A_ROW`` calls abandoned
    with no answer in between: a frozen or unreachable node raises nothing
    else. After a
    failover, the calls for the lost master's slots fail until its replica
    is promoted and a refresh sees it; then they succeed, with no restart.

A ``hit`` makes at most ``MAX_ROUNDS`` rounds of pipelines (redirects and
re-sends included) and is bounded as a whole by ``timeout``, which also
covers waiting for a pooled connection and the first discovery of the slot
map. Timeouts are never retried: the script may have run and counted. A
connection error is re-sent once on a new connection (``reconnect_once``).
Every backend failure is raised as ``StoreError`` from one place,
``_translated``, with the password masked.

Why not redis-py's ``ClusterPipeline``: it re-sends redirected commands one by
one, retries timeouts (counting twice) by closing every connection of the
client, fails at once when a node's connections are all busy, and has no
per-node ``NOSCRIPT`` handling. This store uses ``RedisCluster`` for its slot
map only (never its ``COMMAND``-based key parsing: every call here names its
slot), and one blocking connection pool per node for the pipelines.

Time: as in ``RedisStore``, the script reads ``TIME`` of the master owning the
subject, or the caller's clock when one is given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.algorithms import uncommitted
from ratelimit_ext.store.base import Clock, CounterRequest, CounterResult, Store
from ratelimit_ext.store.connections import connection_class
from ratelimit_ext.store.script import (
    NO_WINDOWS,
    Call,
    CounterScript,
    build_call,
    build_undo,
    counter_keys,
    counter_script,
    has_windows,
    parse_call,
    reconnect_once,
    send_calls,
    subject_slot,
)

logger = logging.getLogger(__name__)

SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
"""The URL schemes of a cluster, and whether each uses TLS."""

MAX_ROUNDS = 3
"""Pipeline rounds per ``hit``: the first, then up to two of redirects."""

REFRESH_INTERVAL = 0.1
"""Seconds between the starts of two refreshes of the slot map, at least."""

REFRESH_TIMEOUT = 2.0
"""Seconds one refresh of the slot map may take, trying seed after seed."""

ABANDONED_IN_A_ROW = 3
"""Calls to one node abandoned with no answer in between that mean it may be
gone (refresh the slot map). Fewer would refresh on every late call of a
busy server: a refresh rebuilds the map of 16384 slots, on the event loop."""

TRYAGAIN_PAUSE = 0.01
"""Seconds to wait before re-sending calls answered ``TRYAGAIN``."""

_STALE_TOPOLOGY = (RedisConnectionError, ClusterDownError, ReadOnlyError)
"""Errors that mean the slot map may be out of date (``MASTERDOWN`` included)."""


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """What a cluster URL names: seed nodes, TLS and connection options."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool
    options: Mapping[str, Any]
    """Keyword arguments for every connection: user, password, query options."""
    shown: str
    """The URL without its password and query, for logs, errors and ``repr``."""


def parse_cluster_url(url: str) -> ClusterAddress:
    """Read a ``redis+cluster://`` URL; raises ``ValueError`` naming the problem."""
    parts = urlsplit(url.strip())
    tls = SCHEMES.get(parts.scheme)
    if tls is None:
        raise ValueError(f"{parts.scheme!r} is not redis+cluster or rediss+cluster")
    login, _, hosts = parts.netloc.rpartition("@")
    shown = _shown(parts, login, hosts)
    seeds = tuple(_seed(host, shown) for host in hosts.split(","))
    options = _options(parts, login, tls, shown)

    return ClusterAddress(seeds, tls, options, shown)


class _Route(NamedTuple):
    """Where a batch of calls goes: a node, and whether each call needs ASKING."""

    host: str
    port: int
    asking: bool = False

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class _Shared:
    """One attempt at some work, awaited by every caller until it succeeds.

    Concurrent first callers share it rather than each doing the work (a
    burst on a cold store would otherwise load the script once per call or
    discover the slot map once per call, one after another). A caller that
    gives up waiting does not cancel it; a failure lets the next caller
    start a new attempt.
    """

    __slots__ = ("_future", "_start")

    def __init__(self, start: Callable[[], Awaitable[object]]) -> None:
        self._start = start
        self._future: asyncio.Future[object] | None = None

    async def wait(self) -> None:
        future = self._future
        if (
            future is not None
            and future.done()
            and not future.cancelled()
            and future.exception() is None
        ):
            return  # done once and for all: the common case, no waiting
        if future is None:
            future = self._future = asyncio.ensure_future(self._start())
            future.add_done_callback(_retrieved)
        try:
            await asyncio.shield(future)
        except (RedisError, RedisClusterException, OSError):
            if self._future is future:
                self._future = None
            raise

    def cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()


def _retrieved(future: asyncio.Future[object]) -> None:
    """Mark a failure as seen even if every caller gave up waiting."""
    if not future.cancelled():
        future.exception()


class _Node:
    """One node's connection pool, and the first loading of the script into it.

    The first calls to a node wait for one shared ``SCRIPT LOAD`` instead of
    each meeting ``NOSCRIPT`` and sending the script's text. ``NOSCRIPT``
    later on (a restart, ``SCRIPT FLUSH``) is handled by ``send_calls``.
    """

    __slots__ = ("abandoned_in_a_row", "client", "loaded")

    def __init__(self, client: Redis, script: CounterScript) -> None:
        self.client = client
        self.loaded = _Shared(lambda: client.script_load(script.text))
        self.abandoned_in_a_row = 0

    async def close(self) -> None:
        self.loaded.cancel()
        await self.client.aclose()


@dataclass(slots=True)
class _Part:
    """The requests of one group that live on one master: one script call.

    ``positions`` are the requests' places in their group, ``slots`` their
    subjects' slots; ``at`` is the time the script counted at, from its reply
    (for an undo).
    """

    group: int
    master: str
    positions: tuple[int, ...]
    requests: tuple[CounterRequest, ...]
    slots: tuple[int, ...]
    at: str = ""

    def counted(self, decided: list[CounterResult]) -> list[CounterRequest]:
        """The requests whose hits this part committed (empty: it committed none)."""
        mine = [decided[p] for p in self.positions]
        pairs = list(zip(self.requests, mine, strict=True))
        if any(r.binding and not result.allowed for r, result in pairs):
            return []
        return [r for r, result in pairs if result.allowed and r.hits > 0]

    def show_uncounted(self, decided: list[CounterResult]) -> None:
        """Replace the results of the committed requests by their uncounted view."""
        for position, request in zip(self.positions, self.requests, strict=True):
            result = decided[position]
            if result.allowed and request.hits > 0:
                windows = tuple(
                    uncommitted(window, shown, request.hits)
                    for window, shown in zip(
                        request.windows, result.windows, strict=True
                    )
                )
                decided[position] = CounterResult(True, windows)


class RedisClusterStore(Store):
    """Counts in Redis Cluster; see the module docstring for routing and errors."""

    name = "redis-cluster"

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        timeout: float = 1.0,
        connect_timeout: float | None = None,
        max_connections: int = 64,
        key_prefix: str = "rlx",
    ) -> None:
        """``timeout`` bounds a whole ``hit``; ``max_connections`` is per node.

        The default timeout is ``RedisStore``'s, 1 s: a backstop bounding what
        a lost node can hold, not the latency budget. The sidecar puts a much
        shorter deadline in front of every remote store (``GuardedStore``).
        Shorter store timeouts work (the tests use 0.1 s) but a burst on a
        cold store, a few hundred concurrent calls opening connections, took
        over 0.5 s on a loaded two-CPU test machine. ``connect_timeout``
        (default: ``timeout``) bounds opening one connection, also while the
        slot map is refreshed. Raises ``ValueError`` for a bad URL or an
        unknown connection option.
        """
        address = parse_cluster_url(url)
        self._where = address.shown
        self._secret = str(address.options.get("password") or "")
        self._clock = clock
        self._prefix = key_prefix
        self._script = counter_script()
        self._timeout = timeout
        self._max_connections = max_connections
        connect = timeout if connect_timeout is None else connect_timeout
        self._connection_class = connection_class(address.tls)
        self._options = {
            **address.options,
            "socket_timeout": timeout,
            "socket_connect_timeout": connect,
        }
        self._check_options(address.seeds[0])
        # RedisCluster builds the NodesManager with the connection options
        # (credentials, TLS); only the manager, the slot map, is used.
        self._topology = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
            require_full_coverage=False,
            retry=Retry(NoBackoff(), 0),
            ssl=address.tls,
            **self._options,
        ).nodes_manager
        self._nodes: dict[str, _Node] = {}
        self._discovery = _Shared(self._topology.initialize)
        self._discovered = False
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")
        self._map_failing = False
        self._masters: frozenset[str] = frozenset()
        self._undoing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"RedisClusterStore({self._where})"

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        now = "" if self._clock is None else repr(self._clock())
        results = [[NO_WINDOWS] * len(group) for group in groups]
        if not any(has_windows(group) for group in groups):
            return results
        with self._translated():
            async with asyncio.timeout(self._timeout):
                await self._discover()
                parts = [
                    part
                    for index, group in enumerate(groups)
                    for part in self._split(index, group)
                ]
                batches: dict[str, list[_Part]] = {}
                for part in parts:
                    batches.setdefault(part.master, []).append(part)
                calls = [self._hit_call(batch, now) for batch in batches.values()]
                replies = await self._run(calls)

        for batch, reply in zip(batches.values(), replies, strict=True):
            at, decided = parse_call(reply, [part.requests for part in batch])
            for part, part_results in zip(batch, decided, strict=True):
                part.at = at
                for position, result in zip(part.positions, part_results, strict=True):
                    results[part.group][position] = result
        undo = self._take_back(parts, results)
        if undo:
            task = asyncio.create_task(self._undo(undo))
            self._undoing.add(task)
            task.add_done_callback(self._undoing.discard)
            await asyncio.shield(task)
        return results

    async def warm(self) -> None:
        """Discover the slot map; connect to every master and load the script."""
        with self._translated():
            async with asyncio.timeout(self._timeout):
                await self._discover()
                masters = self._topology.get_nodes_by_server_type(PRIMARY)
                nodes = [self._node(_Route(m.host, int(m.port))) for m in masters]
                await asyncio.gather(*(node.loaded.wait() for node in nodes))

    async def reset(self, subjects: Sequence[str]) -> int:
        """Delete every counter of ``subjects``; how many keys were deleted.

        One ``DEL`` per subject (its keys share a slot), one pipeline per
        master, all at once. A redirect is not followed: the call fails and
        the slot map is refreshed, for the caller to try again.
        """
        if not subjects:
            return 0
        with self._translated():
            async with asyncio.timeout(self._timeout):
                await self._discover()
                batches: dict[_Route, list[list[str]]] = {}
                for subject in subjects:
                    keys = counter_keys(subject, self._prefix)
                    batches.setdefault(self._owner(keys), []).append(keys)
                deletes = [self._delete(route, keys) for route, keys in batches.items()]
                removed = await asyncio.gather(*deletes)

        return sum(removed)

    async def close(self) -> None:
        if self._undoing:
            await asyncio.wait(self._undoing, timeout=self._timeout)
        self._discovery.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
            with suppress(asyncio.CancelledError):
                await self._refreshing
        nodes, self._nodes = list(self._nodes.values()), {}
        with self._translated():
            await asyncio.gather(*(node.close() for node in nodes))
            await self._topology.aclose()
            await self._topology.aclose("startup_nodes")

    # --- one hit: routing, rounds of per-node pipelines ----------------------

    async def _run(self, calls: list[Call]) -> list[Any]:
        """One reply per call, after at most ``MAX_ROUNDS`` rounds of pipelines."""
        await self._discover()
        replies: list[Any] = [None] * len(calls)
        routes = {index: self._owner(call.keys) for index, call in enumerate(calls)}
        for _ in range(MAX_ROUNDS):
            routes = await self._round(calls, routes, replies)
            if not routes:
                break

        for reply in replies:
            if isinstance(reply, Exception):
                if isinstance(reply, _STALE_TOPOLOGY):
                    self._topology_changed()
                raise reply
        return replies

    async def _round(
        self, calls: list[Call], routes: dict[int, _Route], replies: list[Any]
    ) -> dict[int, _Route]:
        """Send one pipeline per route, all at once; the calls to send again."""
        batches: dict[_Route, list[int]] = {}
        for index, route in routes.items():
            batches.setdefault(route, []).append(index)
        sends = [
            self._send(route, [calls[i] for i in batch])
            for route, batch in batches.items()
        ]
        outcomes = await _all(sends)

        again: dict[int, _Route] = {}
        for (route, batch), outcome in zip(batches.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._topology_changed(failed=route.name)
                raise outcome
            for index, reply in zip(batch, outcome, strict=True):
                replies[index] = reply
                if isinstance(reply, ResponseError):
                    target = _redirect(route, reply)
                    if target is not None:
                        again[index] = target
        await self._after_redirects([replies[i] for i in again])
        return again

    async def _send(self, route: _Route, calls: list[Call]) -> list[Any]:
        node = self._node(route)
        try:
            await node.loaded.wait()
            replies = await send_calls(
                node.client, calls, where=route.name, asking=route.asking
            )
        except asyncio.CancelledError:
            # Abandoned (our timeout or the caller's): a node that accepts
            # connections but never answers raises nothing else. One call
            # abandoned now and then is only a busy server.
            node.abandoned_in_a_row += 1
            if node.abandoned_in_a_row >= ABANDONED_IN_A_ROW:
                self._topology_changed(failed=route.name)
            raise
        node.abandoned_in_a_row = 0
        return replies

    async def _delete(self, route: _Route, subjects_keys: list[list[str]]) -> int:
        pipe = self._node(route).client.pipeline(transaction=False)
        for keys in subjects_keys:
            pipe.delete(*keys)
        try:
            removed: list[int] = await pipe.execute()
        except RedisError:
            self._topology_changed(failed=route.name)
            raise
        return sum(removed)

    def _split(self, index: int, group: Sequence[CounterRequest]) -> list[_Part]:
        """The parts of a group, one per master owning some of its subjects."""
        by_master: dict[str, list[tuple[int, int]]] = {}
        for position, request in enumerate(group):
            if request.windows:
                slot = subject_slot(request.subject)
                master = self._owner_at(slot).name
                by_master.setdefault(master, []).append((position, slot))
        return [
            _Part(
                index,
                master,
                tuple(position for position, _ in placed),
                tuple(group[position] for position, _ in placed),
                tuple(slot for _, slot in placed),
            )
            for master, placed in by_master.items()
        ]

    def _hit_call(self, batch: list[_Part], now: str) -> Call:
        """One call for every part bound for one master, each part a group."""
        groups = [part.requests for part in batch]
        flat = [request for part in batch for request in part.requests]
        slots = [slot for part in batch for slot in part.slots]
        declared = _declared(flat, slots)
        return build_call(groups, now, self._prefix, declared=declared)

    def _undo_call(self, requests: list[CounterRequest], at: str) -> Call:
        slots = [subject_slot(request.subject) for request in requests]
        declared = _declared(requests, slots)
        return build_undo(requests, at, self._prefix, declared=declared)

    def _take_back(
        self, parts: list[_Part], results: list[list[CounterResult]]
    ) -> list[Call]:
        """The undo calls for the committed parts of split groups that a
        binding request refused; their results are shown as not counted.
        """
        split: dict[int, list[_Part]] = {}
        for part in parts:
            split.setdefault(part.group, []).append(part)
        undo: list[Call] = []
        for group, group_parts in split.items():
            if len(group_parts) < 2:
                continue
            decided = results[group]
            refused = any(
                r.binding and not decided[p].allowed
                for part in group_parts
                for p, r in zip(part.positions, part.requests, strict=True)
            )
            if not refused:
                continue
            for part in group_parts:
                counted = part.counted(decided)
                if counted:
                    undo.append(self._undo_call(counted, part.at))
                    part.show_uncounted(decided)
        return undo

    async def _undo(self, calls: list[Call]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._run(calls)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            logger.warning(
                "redis cluster at %s: could not take back %d committed parts of"
                " refused requests: %s",
                self._where,
                len(calls),
                self._redacted(exc),
            )

    async def _discover(self) -> None:
        """The first slot map, shared by the calls that arrive before it."""
        if not self._discovered:
            await self._discovery.wait()
            self._discovered = True
            self._masters = self._master_names()

    def _owner(self, keys: list[str]) -> _Route:
        """The master owning the slot of ``keys`` (one slot), in the current map."""
        return self._owner_at(key_slot(keys[0].encode()))

    def _owner_at(self, slot: int) -> _Route:
        try:
            node = self._topology.get_node_from_slot(slot)
        except SlotNotCoveredError:
            self._topology_changed()
            raise
        return _Route(node.host, int(node.port))

    async def _after_redirects(self, errors: list[ResponseError]) -> None:
        """Patch the map after ``MOVED``; pause before re-sending ``TRYAGAIN``."""
        moved = [error for error in errors if isinstance(error, MovedError)]
        for error in moved:
            if error.slot_id in self._topology.slots_cache:
                await self._topology.move_slot(error)
        if moved:
            self._topology_changed()
        if any(isinstance(error, TryAgainError) for error in errors):
            await asyncio.sleep(TRYAGAIN_PAUSE)

    def _node(self, route: _Route) -> _Node:
        """The connection pool of one node, created on first use."""
        node = self._nodes.get(route.name)
        if node is None:
            pool = BlockingConnectionPool(
                connection_class=self._connection_class,
                max_connections=self._max_connections,
                timeout=self._timeout,
                host=route.host,
                port=route.port,
                retry=reconnect_once(),
                **self._options,
            )
            client = Redis.from_pool(pool)
            node = self._nodes[route.name] = _Node(client, self._script)
        return node

    # --- the slot map ----------------------------------------------------------

    def _topology_changed(self, failed: str | None = None) -> None:
        """Refresh the slot map in the background, unless that just happened."""
        if not self._discovered:
            return  # the next hit discovers it anyway
        if self._refreshing is not None and not self._refreshing.done():
            return
        now = asyncio.get_running_loop().time()
        if now - self._refreshed_at < REFRESH_INTERVAL:
            return
        self._refreshed_at = now
        self._refreshing = asyncio.create_task(self._refresh(failed))

    async def _refresh(self, failed: str | None) -> None:
        """Ask the seeds (``failed`` last) for the slot map; log what changed."""
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                await self._topology.initialize(last_failed_node_name=failed)
        except (RedisError, RedisClusterException, OSError) as exc:
            if not self._map_failing:
                logger.warning(
                    "redis cluster at %s: cannot refresh the slot map: %s",
                    self._where,
                    self._redacted(exc),
                )
            self._map_failing = True
            return

        self._map_failing = False
        await self._forget_departed(set(self._topology.nodes_cache))
        masters = self._master_names()
        if masters != self._masters:
            logger.info(
                "redis cluster at %s: masters are now %s",
                self._where,
                ", ".join(sorted(masters)),
            )
        self._masters = masters

    def _master_names(self) -> frozenset[str]:
        masters = self._topology.get_nodes_by_server_type(PRIMARY)
        return frozenset(node.name for node in masters)

    async def _forget_departed(self, known: set[str]) -> None:
        """Close the pools of nodes that have left the cluster."""
        departed = [name for name in self._nodes if name not in known]
        nodes = [self._nodes.pop(name) for name in departed]
        await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)

    # --- errors ------------------------------------------------------------------

    def _check_options(self, seed: tuple[str, int]) -> None:
        """Refuse unknown connection options now, not on the first hit."""
        host, port = seed
        try:
            self._connection_class(host=host, port=port, **self._options)
        except TypeError as exc:
            raise ValueError(
                f"store URL {self._where!r}: unsupported connection option ({exc})"
            ) from None

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The one place where a backend failure becomes ``StoreError``."""
        try:
            yield
        except TimeoutError as exc:  # asyncio.timeout; redis' own is a RedisError
            late = f"no answer within {self._timeout} s"
            raise StoreError(f"redis cluster at {self._where}: {late}") from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            message = f"redis cluster at {self._where} failed: {self._redacted(exc)}"
            raise StoreError(message) from exc

    def _redacted(self, exc: BaseException) -> str:
        detail = f"{type(exc).__name__}: {exc}"
        return detail.replace(self._secret, "***") if self._secret else detail


def _declared(requests: Sequence[CounterRequest], slots: Sequence[int]) -> int:
    """How many leading keys share the first one's slot; -1: all of them."""
    declared = 0
    for request, slot in zip(requests, slots, strict=True):
        if slot != slots[0]:
            return declared
        declared += len(request.windows)
    return -1


async def _all(
    sends: Sequence[Awaitable[list[Any]]],
) -> list[list[Any] | BaseException]:
    """Every send's replies or backend error, as ``gather(return_exceptions=True)``
    would give; a single send is awaited without wrapping it in a task."""
    if len(sends) != 1:
        return await asyncio.gather(*sends, return_exceptions=True)
    try:
        return [await sends[0]]
    except (RedisError, RedisClusterException, OSError) as exc:
        return [exc]  # handed back like gather does; _round raises it


def _redirect(route: _Route, reply: ResponseError) -> _Route | None:
    """Where to send a call again after an error ``reply``; None to keep it."""
    if isinstance(reply, AskError):  # MOVED too: a subclass of ASK
        return _Route(reply.host, reply.port, asking=not isinstance(reply, MovedError))
    if isinstance(reply, TryAgainError):
        return route
    return None


def _shown(parts: SplitResult, login: str, hosts: str) -> str:
    user, colon, _ = login.partition(":")
    login_shown = f"{user}{':***' if colon else ''}@" if login else ""
    return f"{parts.scheme}://{login_shown}{hosts}{parts.path}"


def _seed(text: str, shown: str) -> tuple[str, int]:
    """One ``host[:port]`` of the seed list."""
    parts = urlsplit(f"//{text}")
    if not parts.hostname:
        raise ValueError(f"store URL {shown!r}: a seed node has no host")
    try:
        port = parts.port
    except ValueError:
        message = f"store URL {shown!r}: the port of {text!r} is not a number"
        raise ValueError(f"{message} from 0 to 65535") from None

    return parts.hostname, port or 6379


def _options(parts: SplitResult, login: str, tls: bool, shown: str) -> dict[str, Any]:
    """User, password and query options, as redis-py reads them from a URL."""
    scheme = "rediss" if tls else "redis"
    at = f"{login}@" if login else ""
    options: dict[str, Any] = dict(parse_url(f"{scheme}://{at}seed/?{parts.query}"))
    for taken in ("host", "port", "connection_class", "path"):
        options.pop(taken, None)
    database = parts.path.strip("/")
    if options.pop("db", 0) or database not in ("", "0"):
        raise ValueError(f"store URL {shown!r}: a cluster has only database 0")

    return options
