"""The counter script and its calls, shared by the Redis and Redis Cluster stores.

``lua/hit.lua`` decides one ``CounterRequest``: it checks every window of the
subject and commits all of them or none. This module owns what both Redis
stores do the same way: the script's text and SHA1, the keys and arguments
of one call, sending a batch of calls as one pipeline of ``EVALSHA`` (and
re-sending with the script's text after ``NOSCRIPT``), reading the replies, the
one retry they allow (``reconnect_once``).

Keys: ``<prefix>:{<tag>}:<alg>:<unit seconds>``, one hash per window, where
``tag`` is the first 8 bytes of the subject's BLAKE2b digest in hex. All keys
of a subject share that hash tag, so one call lives in one cluster slot.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
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

Call = tuple[list[str], list[str]]
"""The KEYS and ARGV of one script call; no keys means nothing to count."""

NO_WINDOWS = CounterResult(True, ())
"""The result of a request without windows: nothing to count, admitted."""


@dataclass(frozen=True, slots=True)
class CounterScript:
    """The Lua source of ``lua/hit.lua`` and the SHA1 it is called by."""

    text: str
    sha: str


@lru_cache(maxsize=1)
def counter_script() -> CounterScript:
    text = resources.files("ratelimit_ext.store").joinpath("lua/hit.lua").read_text()

    return CounterScript(text, hashlib.sha1(text.encode()).hexdigest())


def hash_tag(subject: str) -> str:
    """The cluster hash tag (without braces) shared by every key of ``subject``."""
    return hashlib.blake2b(subject.encode(), digest_size=8).hexdigest()


def build_call(request: CounterRequest, now: str, prefix: str) -> Call:
    """The keys and arguments deciding ``request``; ``now`` "" reads server TIME."""
    tag = hash_tag(request.subject)
    keys: list[str] = []
    args = [now, str(request.hits)]
    for window in request.windows:
        suffix, window_args = _window_parts(window)
        keys.append(f"{prefix}:{{{tag}}}:{suffix}")
        args.extend(window_args)

    return keys, args


def counter_keys(subject: str, prefix: str) -> list[str]:
    """Every key ``subject``'s counters can have: each algorithm and unit."""
    tag = hash_tag(subject)
    codes = _ALGORITHM_CODES.values()

    return [
        f"{prefix}:{{{tag}}}:{code}:{unit.seconds}" for code in codes for unit in Unit
    ]


def parse_result(reply: list[Any]) -> CounterResult:
    """One script reply: overall verdict, then allowed/remaining/reset per window."""
    windows = tuple(
        WindowResult(bool(reply[i]), int(reply[i + 1]), float(_text(reply[i + 2])))
        for i in range(1, len(reply), 3)
    )
    return CounterResult(bool(reply[0]), windows)


def reconnect_once() -> Retry:
    """Re-send once after a connection error, at once; never after a timeout.

    A timed-out script may have run and counted; a connection error is
    typically a pooled connection that the server closed when it restarted.
    """
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


async def send_calls(
    client: Redis,
    script: CounterScript,
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
    replies = await _pipeline(client, script, calls, asking, by_text=False)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        logger.debug("redis at %s lacks the counter script; sending it", where)
        again = [calls[i] for i in missing]
        retried = await _pipeline(client, script, again, asking, by_text=True)
        for index, reply in zip(missing, retried, strict=True):
            replies[index] = reply

    return replies


async def _pipeline(
    client: Redis,
    script: CounterScript,
    calls: Sequence[Call],
    asking: bool,
    *,
    by_text: bool,
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
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
