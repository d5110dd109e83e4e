"""The contract every counter store honours.

A store counts hits against *subjects*. One ``CounterRequest`` carries all the
windows of one rule for one subject; the store checks every window and commits
the hits to all of them only if every window has room (all or nothing), so a
request refused by a daily window does not consume the minute window.

The algorithms (exact semantics, identical in every store):

fixed_window
    Windows of ``unit`` seconds aligned to the Unix epoch. Admitted iff
    ``count + hits <= limit``. ``remaining = limit - count`` after the commit;
    ``reset`` = seconds until the window ends.
sliding_window
    Sliding-window counter: ``estimate = previous * (1 - elapsed / unit) +
    current``. Admitted iff ``estimate + hits <= limit``. ``remaining =
    floor(limit - estimate)`` after the commit; ``reset`` = seconds until the
    current (epoch-aligned) window ends.
token_bucket
    A bucket of ``capacity`` (``burst``, default ``limit``) tokens refilled at
    ``limit / unit`` tokens per second, full when first seen. Admitted iff
    ``tokens >= hits``. ``remaining = floor(tokens)`` after the commit;
    ``reset`` = seconds until the bucket is full again when admitted, or until
    enough tokens for this request exist when refused.

``hits == 0`` checks without counting: it is admitted iff one more hit would be.
Refused hits are never committed.

Groups (``hit_groups``): the requests of one group are decided together. A
request *has room* when every one of its windows has; the hits of the
requests with room are committed only if every *binding* request of the
group has room, otherwise none of them is (the "do not consume the other
descriptors of a rejected request" option). A request later in a group sees
the uncommitted hits of the earlier ones, so two requests on one counter
count twice, as they would one after the other. A group of one request is
the ordinary case, and ``hit`` decides each request as such a group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ratelimit_ext.policy.model import Window

Clock = Callable[[], float]
"""Seconds since the Unix epoch, as a float."""


@dataclass(frozen=True, slots=True)
class CounterRequest:
    """Hits against one subject, checked and committed across all its windows.

    ``subject`` identifies the counted thing (domain + descriptor entries, and
    anything else that must keep counters apart). Two requests with the same
    subject and the same window unit and algorithm share a counter, whatever
    their limits: a changed limit keeps counting in the current window.
    """

    subject: str
    windows: tuple[Window, ...]
    hits: int = 1
    binding: bool = True
    """In a group: whether this request's refusal withholds the others' hits."""


@dataclass(frozen=True, slots=True)
class WindowResult:
    allowed: bool
    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class CounterResult:
    """``allowed`` is True iff every window had room.

    The hits of an allowed request were committed, except in a group that a
    binding request refused; ``windows`` then describe the counters without
    them, as for a request with ``hits == 0``.
    """

    allowed: bool
    windows: tuple[WindowResult, ...]


class Store(Protocol):
    """A counter store. Every backend failure is raised as ``StoreError``.

    Stores subclass this protocol to inherit ``hit``.
    """

    name: str

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        """Decide every group (see the module docstring): results by group, in order."""
        ...

    async def hit(self, requests: Sequence[CounterRequest]) -> list[CounterResult]:
        """Decide each request on its own, one result per request, in order."""
        decided = await self.hit_groups([(request,) for request in requests])
        return [result for (result,) in decided]

    async def warm(self) -> None:
        """Get ready for the first decision: connect, load scripts.

        Called once before the server reports SERVING, so the first requests
        do not pay for it within their deadline. Raises ``StoreError``.
        """
        return None

    async def close(self) -> None: ...


@runtime_checkable
class Resettable(Protocol):
    """A store that can forget counters (the admin API's ResetCounters)."""

    async def reset(self, subjects: Sequence[str]) -> int:
        """Remove every counter of ``subjects``; returns how many were removed."""
        ...
