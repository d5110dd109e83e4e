"""The counter scripts and their calls, shared by the Redis and Redis Cluster stores.

``lua/hit.lua`` decides groups of ``CounterRequest`` (see ``base.py``) in one
call: it checks every window of every request and commits each group all
or nothing.
``lua/undo.lua`` takes committed hits back (a cluster group split over
several masters, one of which refused). This module owns what both Redis
stores do the same way: the scripts' text and SHA1, the keys and arguments
of one call, sending a batch of calls as one pipeline of ``EVALSHA`` (and
re-sending with the script's text after ``NOSCRIPT``), reading the replies,
the one retry they allow (``reconnect_once``).

Keys: ``<prefix>:{<tag>}:<alg>:<unit seconds>``, one hash per window, where
``tag`` is the first 8 bytes of the subject's BLAKE2b digest in hex. All keys
of a subject share that hash tag, so a call for one subject lives in one
cluster slot. A call for several subjects of one cluster node declares the
keys of its first slot and passes the others as arguments, sent with the
``allow-cross-slot-keys`` flag (``Call.cross_slot``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ratelimit_ext.policy.model import Algorithm, Unit, Window
from ratelimit_ext.store.base import CounterRequest, CounterResult, WindowResult

logger = logging.getLogger(__name__)

_ALGORITHM_CODES = {
    Algorithm.FIXED_WINDOW: "fw",
    Algorithm.SLIDING_WINDOW: "sw",
    Algorithm.TOKEN_BUCKET: "tb",
}

NO_WINDOWS = CounterResult(True, ())
"""The result of a request without windows: nothing to count, admitted."""

CROSS_SLOT_FLAG = "#!lua flags=allow-cross-slot-keys\n"
"""Lets a script touch keys of several slots of its node (Redis 7, Valkey)."""


@dataclass(frozen=True, slots=True)
class CounterScript:
    """The Lua source of one script and the SHA1 it is called by."""

    text: str
    sha: str


class Call(NamedTuple):
    """One script call: its declared keys, its arguments, and the script."""

    keys: list[str]
    args: list[str]
    script: CounterScript


def counter_script(*, cross_slot: bool = False) -> CounterScript:
    """``lua/hit.lua``, flagged ``allow-cross-slot-keys`` if ``cross_slot``."""
    return _script("hit.lua", cross_slot)


def undo_script(*, cross_slot: bool = False) -> CounterScript:
    """``lua/undo.lua``, flagged ``allow-cross-slot-keys`` if ``cross_slot``."""
    return _script("undo.lua", cross_slot)


@lru_cache(maxsize=4)
def _script(name: str, cross_slot: bool) -> CounterScript:
    text = resources.files("ratelimit_ext.store").joinpath(f"lua/{name}").read_text()
    if cross_slot:
        text = CROSS_SLOT_FLAG + text
    return CounterScript(text, hashlib.sha1(text.encode()).hexdigest())


def hash_tag(subject: str) -> str:
    """The cluster hash tag (without braces) shared by every key of ``subject``."""
    return hashlib.blake2b(subject.encode(), digest_size=8).hexdigest()


def subject_slot(subject: str) -> int:
    """The Redis Cluster slot of every key of ``subject``."""
    return key_slot(hash_tag(subject).encode())


def window_keys(request: CounterRequest, prefix: str) -> list[str]:
    """The key of each window of ``request``, in order."""
    tag = hash_tag(request.subject)
    return [f"{prefix}:{{{tag}}}:{_window_parts(w)[0]}" for w in request.windows]


def has_windows(group: Sequence[CounterRequest]) -> bool:
    return any(request.windows for request in group)


def build_call(
    groups: Sequence[Sequence[CounterRequest]],
    now: str,
    prefix: str,
    *,
    declared: int = -1,
) -> Call:
    """One call deciding ``groups``, each all or nothing, in order.

    ``now`` "" reads the server's TIME. ``declared`` keys (all by default)
    go in KEYS, the rest at the end of the arguments, with the cross-slot
    flag.
    """
    keys: list[str] = []
    args = [now, str(sum(len(group) for group in groups))]
    window_args: list[str] = []
    for number, group in enumerate(groups, start=1):
        for request in group:
            binding = "1" if request.binding else "0"
            args += (str(number), str(request.hits), binding, str(len(request.windows)))
            keys += window_keys(request, prefix)
            for window in request.windows:
                window_args.extend(_window_parts(window)[1])
    args += window_args
    if 0 <= declared < len(keys):
        return Call(
            keys[:declared], args + keys[declared:], counter_script(cross_slot=True)
        )
    return Call(keys, args, counter_script())


def build_undo(
    group: Sequence[CounterRequest], now: str, prefix: str, *, declared: int = -1
) -> Call:
    """The call taking back the committed hits of ``group``, counted at ``now``.

    Each request committed each of its keys once (two windows of one
    request may share a key); two requests on one key committed twice.
    """
    keys: list[str] = []
    args = [now]
    for request in group:
        own: set[str] = set()
        for key, window in zip(
            window_keys(request, prefix), request.windows, strict=True
        ):
            if key in own:
                continue
            own.add(key)
            keys.append(key)
            code, _, unit, capacity = _window_parts(window)[1]
            args += (code, unit, capacity, str(request.hits))
    if 0 <= declared < len(keys):
        return Call(
            keys[:declared], args + keys[declared:], undo_script(cross_slot=True)
        )
    return Call(keys, args, undo_script())


def counter_keys(subject: str, prefix: str) -> list[str]:
    """Every key ``subject``'s counters can have: each algorithm and unit."""
    tag = hash_tag(subject)
    codes = _ALGORITHM_CODES.values()

    return [
        f"{prefix}:{{{tag}}}:{code}:{unit.seconds}" for code in codes for unit in Unit
    ]


def parse_call(
    reply: list[Any], groups: Sequence[Sequence[CounterRequest]]
) -> tuple[str, list[list[CounterResult]]]:
    """One script reply: the time it counted at, and the results by group."""
    decided: list[list[CounterResult]] = []
    at = 1
    for group in groups:
        results: list[CounterResult] = []
        for request in group:
            room = bool(reply[at])
            at += 1
            windows = []
            for _ in request.windows:
                allowed, left, reset = reply[at : at + 3]
                windows.append(WindowResult(bool(allowed), int(left), float(reset)))
                at += 3
            results.append(CounterResult(room, tuple(windows)))
        decided.append(results)
    return _text(reply[0]), decided


def reconnect_once() -> Retry:
    """Re-send once after a connection error, at once; never after a timeout.

    A timed-out script may have run and counted; a connection error is
    typically a pooled connection that the server closed when it restarted.
    """
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


async def send_calls(
    client: Redis,
    calls: Sequence[Call],
    *,
    where: str,
    asking: bool = False,
) -> list[Any]:
    """Send ``calls`` as one pipeline; one reply per call, errors left in place.

    Calls answered ``NOSCRIPT`` are sent again in one more pipeline as
    ``EVAL`` with the script's text, which runs them and caches the script
    for the ``EVALSHA`` of later calls: one extra round trip, however many
    concurrent calls found the script missing. ``asking`` puts an ``ASKING``
    before every call (the target of a cluster ``ASK`` redirect). Connection
    errors and timeouts are raised; ``where`` names the server in logs.
    """
    replies = await _pipeline(client, calls, asking, by_text=False)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        logger.debug("redis at %s lacks the counter script; sending it", where)
        again = [calls[i] for i in missing]
        retried = await _pipeline(client, again, asking, by_text=True)
        for index, reply in zip(missing, retried, strict=True):
            replies[index] = reply

    return replies


async def _pipeline(
    client: Redis,
    calls: Sequence[Call],
    asking: bool,
    *,
    by_text: bool,
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args, script in calls:
        if asking:
            pipe.execute_command("ASKING")
        if by_text:
            pipe.eval(script.text, len(keys), *keys, *args)
        else:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)

    return replies[1::2] if asking else replies


@lru_cache(maxsize=4096)
def _window_parts(window: Window) -> tuple[str, tuple[str, str, str, str]]:
    """The key suffix and the script arguments of one window, computed once."""
    code = _ALGORITHM_CODES[window.algorithm]
    unit = window.unit.seconds
    args = (code, str(window.limit), str(unit), str(window.capacity))
    return f"{code}:{unit}", args


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
