"""An in-process counter store: exact, fast, and local to one replica.

Counters are keyed by (subject, algorithm, unit seconds), never by limit, so a
changed limit keeps counting in the current window. ``hit`` never awaits
between reading and committing, so concurrent tasks on one event loop cannot
interleave inside a decision.

Expired counters are dropped by a sweep that runs at most once per
``sweep_interval`` seconds of the store's clock, from inside ``hit``: memory
stays proportional to the subjects seen within the longest live window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ratelimit_ext.policy.model import Algorithm, Window
from ratelimit_ext.store.algorithms import Evaluation, State, evaluate
from ratelimit_ext.store.base import (
    Clock,
    CounterRequest,
    CounterResult,
    Store,
    WindowResult,
)

_Key = tuple[str, Algorithm, int]


class MemoryStore(Store):
    """Counts in a dict; see the module docstring for keys and expiry."""

    name = "memory"

    def __init__(
        self, clock: Clock = time.time, *, sweep_interval: float = 1.0
    ) -> None:
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._counters: dict[_Key, State] = {}
        self._last_sweep = clock()

    def __len__(self) -> int:
        """The number of counters held, live or not yet swept."""
        return len(self._counters)

    def __repr__(self) -> str:
        return f"MemoryStore(counters={len(self._counters)})"

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        now = self._clock()
        self._maybe_sweep(now)

        return [self._decide(group, now) for group in groups]

    async def close(self) -> None:
        self._counters.clear()

    async def reset(self, subjects: Sequence[str]) -> int:
        wanted = set(subjects)
        keys = [key for key in self._counters if key[0] in wanted]
        for key in keys:
            del self._counters[key]
        return len(keys)

    def _decide(
        self, group: Sequence[CounterRequest], now: float
    ) -> list[CounterResult]:
        """One group: evaluate every request, then commit all of them or none.

        ``pending`` holds the states the requests with room would leave, so
        later requests of the group count on top of earlier ones.
        """
        pending: dict[_Key, State] = {}
        decided: list[tuple[CounterRequest, list[Evaluation], bool]] = []
        for request in group:
            keys = [_key(request.subject, window) for window in request.windows]
            evaluations = [
                evaluate(
                    window, pending.get(key, self._counters.get(key)), request.hits, now
                )
                for key, window in zip(keys, request.windows, strict=True)
            ]
            room = all(evaluation.room for evaluation in evaluations)
            if room and request.hits > 0:
                _stage(pending, keys, evaluations)
            decided.append((request, evaluations, room))
        commit = all(room for request, _, room in decided if request.binding)
        if commit:
            self._counters.update(pending)

        return [
            CounterResult(
                room, _shown(evaluations, commit and room and request.hits > 0)
            )
            for request, evaluations, room in decided
        ]

    def _maybe_sweep(self, now: float) -> None:
        if 0.0 <= now - self._last_sweep < self._sweep_interval:
            return
        self._last_sweep = now
        expired = [k for k, s in self._counters.items() if s.expires_at <= now]
        for key in expired:
            del self._counters[key]


def _stage(
    pending: dict[_Key, State], keys: list[_Key], evaluations: list[Evaluation]
) -> None:
    """Each key's new state once, even if two windows of a request share a key."""
    fresh: dict[_Key, State] = {}
    for key, evaluation in zip(keys, evaluations, strict=True):
        fresh.setdefault(key, evaluation.state)
    pending.update(fresh)


def _shown(evaluations: list[Evaluation], committed: bool) -> tuple[WindowResult, ...]:
    if committed:
        return tuple(evaluation.committed for evaluation in evaluations)
    return tuple(evaluation.kept for evaluation in evaluations)


def _key(subject: str, window: Window) -> _Key:
    return (subject, window.algorithm, window.unit.seconds)
