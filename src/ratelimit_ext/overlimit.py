"""A local cache of counters known to be over their limit.

Once the store has refused a subject in a window that cannot regain room
before a known time (a fixed window until it ends; a token bucket until it
holds enough tokens for the same request), later requests for that subject
are refused here without a store round trip until then. The key holds the
subject, every window (limits included) and the hit count, so a changed limit
or override is never answered from a stale entry. Sliding windows regain room
continuously and are never cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ratelimit_ext.policy.model import Algorithm, Window
from ratelimit_ext.store.base import CounterResult

_CACHEABLE = frozenset({Algorithm.FIXED_WINDOW, Algorithm.TOKEN_BUCKET})

_Key = tuple[str, tuple[Window, ...], int]


@dataclass(frozen=True, slots=True)
class CachedRefusal:
    window: Window
    until: float


class OverLimitCache:
    """Refusals remembered until they expire; bounded in size."""

    __slots__ = ("_clock", "_entries", "_max_entries", "hits")

    def __init__(self, clock: Callable[[], float], max_entries: int = 100_000) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[_Key, CachedRefusal] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, subject: str, windows: tuple[Window, ...], hits: int
    ) -> tuple[Window, float] | None:
        """The refusing window and seconds left, if still known to be over."""
        if not self._entries:
            return None
        key = (subject, windows, hits)
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry.until - self._clock()
        if left <= 0:
            del self._entries[key]
            return None
        self.hits += 1
        return entry.window, left

    def remember(
        self,
        subject: str,
        windows: tuple[Window, ...],
        hits: int,
        result: CounterResult,
    ) -> None:
        refusing = [
            (window, state)
            for window, state in zip(windows, result.windows, strict=True)
            if not state.allowed
        ]
        if not refusing or any(w.algorithm not in _CACHEABLE for w, _ in refusing):
            return
        window, state = max(refusing, key=lambda pair: pair[1].reset_seconds)
        if state.reset_seconds <= 0:
            return
        if len(self._entries) >= self._max_entries:
            self._evict()
        until = self._clock() + state.reset_seconds
        self._entries[(subject, windows, hits)] = CachedRefusal(window, until)

    def clear(self) -> None:
        self._entries.clear()

    def _evict(self) -> None:
        now = self._clock()
        live = {k: v for k, v in self._entries.items() if v.until > now}
        if len(live) >= self._max_entries:
            keep = list(live.items())[len(live) // 2 :]
            live = dict(keep)
        self._entries = live
