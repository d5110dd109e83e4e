"""Request coalescing: concurrent decisions share one store round trip.

Every decision that reaches the store while a batch is open joins it; the
batch is sent as one ``hit`` call (one pipeline per Redis node) when the
window closes, and each decision gets its own results back. A window of 0
sends at the next turn of the event loop: no added latency, and everything
that became ready in the same turn travels together. A larger window trades
that latency for bigger batches.

A failed batch fails every decision in it with the same ``StoreError``. A
decision that stops waiting (its deadline passed) leaves the batch intact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store

logger = logging.getLogger(__name__)


_Results = list[list[CounterResult]]


class _Batch:
    __slots__ = ("groups", "waiters")

    def __init__(self) -> None:
        self.groups: list[Sequence[CounterRequest]] = []
        self.waiters: list[tuple[asyncio.Future[_Results], int, int]] = []


class CoalescingStore(Store):
    """Batches concurrent ``hit`` calls into one call of the inner store."""

    def __init__(self, inner: Store, window_seconds: float = 0.0) -> None:
        if window_seconds < 0:
            raise ValueError("coalescing window must not be negative")
        self.inner = inner
        self.name = inner.name
        self._window = window_seconds
        self._open: _Batch | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.decisions = 0

    async def hit_groups(
        self, groups: Sequence[Sequence[CounterRequest]]
    ) -> list[list[CounterResult]]:
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
            self._schedule(batch)
        future: asyncio.Future[_Results] = asyncio.get_running_loop().create_future()
        start = len(batch.groups)
        batch.groups.extend(groups)
        batch.waiters.append((future, start, len(batch.groups)))
        return await future

    async def warm(self) -> None:
        await self.inner.warm()

    async def close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self.inner.close()

    def _schedule(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        if self._window > 0:
            loop.call_later(self._window, self._flush, batch)
        else:
            loop.call_soon(self._flush, batch)

    def _flush(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Batch) -> None:
        self.batches += 1
        self.decisions += len(batch.waiters)
        try:
            results = await self.inner.hit_groups(batch.groups)
        except StoreError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:
            # Every waiter must be woken, whatever went wrong.
            logger.exception("coalesced store call failed unexpectedly")
            self._fail(batch, exc)
            return
        for future, start, end in batch.waiters:
            if not future.done():
                future.set_result(results[start:end])

    @staticmethod
    def _fail(batch: _Batch, error: Exception) -> None:
        for future, _, _ in batch.waiters:
            if not future.done():
                shared = StoreError(str(error))
                shared.__cause__ = error
                future.set_exception(shared)
