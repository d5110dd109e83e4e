"""The counting algorithms as pure functions of a window, a state and ``now``.

Every function here returns an ``Evaluation``: whether the window has room for
the hits, the window's result with and without committing them, and the state
to keep if they are committed. Nothing is mutated, so a store can evaluate all
windows of a request first and commit all or nothing afterwards.

The Lua script in ``lua/hit.lua`` mirrors this module operation by operation,
in the same order, so that both stores compute bit-identical floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ratelimit_ext.policy.model import Algorithm, Window
from ratelimit_ext.store.base import WindowResult


@dataclass(frozen=True, slots=True)
class FixedState:
    """Hits counted in the fixed window that starts at ``start``."""

    start: int
    count: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class SlidingState:
    """Hits of the window starting at ``start`` and of the window before it."""

    start: int
    current: int
    previous: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class BucketState:
    """Tokens left at time ``stamp``; an absent state is a full bucket.

    ``expires_at`` is when the bucket was due to be full at the rate of the
    commit; after it the bucket counts as full even if the rate changed since.
    """

    tokens: float
    stamp: float
    expires_at: float


State = FixedState | SlidingState | BucketState


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One window's verdict before the store decides whether to commit.

    ``kept`` describes the window if nothing is committed (a refused request,
    a check-only request); ``committed`` describes it after the hits are
    added, and ``state`` is what to store then.
    """

    room: bool
    kept: WindowResult
    committed: WindowResult
    state: State


def evaluate(window: Window, state: State | None, hits: int, now: float) -> Evaluation:
    """Evaluate ``hits`` against ``window`` given the stored ``state``.

    A state at or past its ``expires_at`` counts as absent, whether or not a
    store has reclaimed it yet: answers never depend on when a sweep ran.
    """
    if state is not None and state.expires_at <= now:
        state = None
    algorithm = window.algorithm
    if algorithm is Algorithm.FIXED_WINDOW:
        fixed = state if isinstance(state, FixedState) else None
        return fixed_window(window, fixed, hits, now)
    if algorithm is Algorithm.SLIDING_WINDOW:
        sliding = state if isinstance(state, SlidingState) else None
        return sliding_window(window, sliding, hits, now)
    bucket = state if isinstance(state, BucketState) else None
    return token_bucket(window, bucket, hits, now)


def window_start(now: float, unit: int) -> int:
    """The start of the epoch-aligned window of ``unit`` seconds holding ``now``."""
    return math.floor(now / unit) * unit


def fixed_window(
    window: Window, state: FixedState | None, hits: int, now: float
) -> Evaluation:
    unit = window.unit.seconds
    start = window_start(now, unit)
    count = state.count if state is not None and state.start == start else 0
    room = count + max(hits, 1) <= window.limit
    reset = start + unit - now

    return Evaluation(
        room=room,
        kept=WindowResult(room, _remaining(window.limit - count), reset),
        committed=WindowResult(room, _remaining(window.limit - (count + hits)), reset),
        state=FixedState(start, count + hits, expires_at=start + unit),
    )


def sliding_window(
    window: Window, state: SlidingState | None, hits: int, now: float
) -> Evaluation:
    unit = window.unit.seconds
    start = window_start(now, unit)
    current, previous = _sliding_counts(state, start, unit)
    weight = previous * (1 - (now - start) / unit)
    estimate = weight + current
    room = estimate + max(hits, 1) <= window.limit
    reset = start + unit - now
    after = weight + (current + hits)

    return Evaluation(
        room=room,
        kept=WindowResult(room, _remaining(window.limit - estimate), reset),
        committed=WindowResult(room, _remaining(window.limit - after), reset),
        state=SlidingState(start, current + hits, previous, start + 2 * unit),
    )


def _sliding_counts(
    state: SlidingState | None, start: int, unit: int
) -> tuple[int, int]:
    """(current, previous) counts as seen from the window starting at ``start``."""
    if state is None:
        return 0, 0
    if state.start == start:
        return state.current, state.previous
    if state.start == start - unit:
        return 0, state.current
    return 0, 0


def token_bucket(
    window: Window, state: BucketState | None, hits: int, now: float
) -> Evaluation:
    if window.limit <= 0:
        return _empty_bucket(window, now)
    capacity = window.capacity
    rate = window.limit / window.unit.seconds
    tokens = _refill(state, capacity, rate, now)
    need = max(hits, 1)
    room = tokens >= need
    wait = (capacity - tokens) / rate if room else (need - tokens) / rate
    left = tokens - hits
    until_full = (capacity - left) / rate

    return Evaluation(
        room=room,
        kept=WindowResult(room, _remaining(tokens), wait),
        committed=WindowResult(room, _remaining(left), until_full),
        state=BucketState(left, now, expires_at=now + until_full),
    )


def _refill(state: BucketState | None, capacity: int, rate: float, now: float) -> float:
    if state is None:
        return capacity
    return min(capacity, state.tokens + max(now - state.stamp, 0.0) * rate)


def _empty_bucket(window: Window, now: float) -> Evaluation:
    """A bucket that never refills (limit 0): everything is refused."""
    unit = window.unit.seconds
    refused = WindowResult(False, 0, float(unit))
    state = BucketState(0.0, now, expires_at=now + unit)

    return Evaluation(room=False, kept=refused, committed=refused, state=state)


def _remaining(value: float) -> int:
    return max(math.floor(value), 0)


def uncommitted(window: Window, committed: WindowResult, hits: int) -> WindowResult:
    """What a window that committed ``hits`` shows once they are taken back.

    Exact for every algorithm: a window with room never clamps ``remaining``,
    and a bucket is full ``hits / rate`` seconds sooner.
    """
    reset = committed.reset_seconds
    if window.algorithm is Algorithm.TOKEN_BUCKET and window.limit > 0:
        reset -= hits * window.unit.seconds / window.limit
    return WindowResult(committed.allowed, committed.remaining + hits, max(reset, 0.0))
