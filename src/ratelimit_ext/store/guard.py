"""Bounds on every store call: a deadline and a circuit breaker.

Envoy gives a rate-limit call 20 ms by default. A store call that takes
longer than the deadline is abandoned and becomes ``StoreError``, so the
failure policy answers while Envoy is still waiting. After
``failure_threshold`` consecutive failures the breaker opens: calls fail at
once, without touching the store, for ``open_seconds``; then one probe call is
let through (half-open) and its outcome closes or re-opens the breaker.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store

logger = logging.getLogger(__name__)


class CircuitOpen(Exception):
    """The cause of a ``StoreError`` for a call the open breaker kept back."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class GuardSettings:
    timeout_seconds: float = 0.015
    failure_threshold: int = 5
    open_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0:
            raise ValueError("store timeout must be positive")
        if self.failure_threshold < 1:
            raise ValueError("breaker failure threshold must be at least 1")
        if self.open_seconds <= 0:
            raise ValueError("breaker open time must be positive")


class CircuitBreaker:
    """Counts consecutive failures; decides whether a call may go out."""

    __slots__ = ("_clock", "_failures", "_opened_at", "_probing", "_settings", "state")

    def __init__(
        self, settings: GuardSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = BreakerState.CLOSED

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._settings.open_seconds:
                return False
            self._transition(BreakerState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._probing = False
        if self.state is not BreakerState.CLOSED:
            self._transition(BreakerState.CLOSED)

    def abandoned(self) -> None:
        """The caller gave up on a call (e.g. Envoy cancelled the RPC).

        It says nothing about the store; a probe that was abandoned must not
        keep the breaker half-open for ever, so the next call may probe again.
        """
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        self._probing = False
        reopen = self.state is BreakerState.HALF_OPEN
        if reopen or self._failures >= self._settings.failure_threshold:
            self._opened_at = self._clock()
            if self.state is not BreakerState.OPEN:
                self._transition(BreakerState.OPEN)

    def _transition(self, state: BreakerState) -> None:
        logger.info("store circuit breaker %s -> %s", self.state.value, state.value)
        self.state = state


class GuardedStore(Store):
    """A store whose calls are bounded by a deadline and a circuit breaker."""

    def __init__(
        self,
        inner: Store,
        settings: GuardSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._timeout = settings.timeout_seconds
        self.breaker = CircuitBreaker(settings, clock)

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        if not self.breaker.allow():
            raise StoreError(
                f"store {self.name}: circuit open, not called"
            ) from CircuitOpen()
        try:
            async with asyncio.timeout(self._timeout):
                results = await self.inner.hit_groups(groups)
        except TimeoutError as exc:
            self.breaker.failed()
            raise StoreError(
                f"store {self.name}: no answer within {self._timeout * 1000:.0f} ms"
            ) from exc
        except StoreError:
            self.breaker.failed()
            raise
        except asyncio.CancelledError:
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()
        return results

    async def warm(self) -> None:
        await self.inner.warm()

    async def close(self) -> None:
        await self.inner.close()
