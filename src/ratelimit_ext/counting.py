"""From limits to verdicts: the store, the over-limit cache, the failure policy.

``LimitCounter.count`` takes the limited descriptors of one decision, answers
those the over-limit cache already knows to be over, sends the rest to the
store in one call, and turns results into verdicts. When the store fails the
domain's failure policy (or the server's default) decides, and every such
decision is counted in a metric.

All or nothing (``all_or_nothing`` of a domain, or the server's default):
the descriptors of one decision are counted as one group, so a request that
one descriptor rejects consumes none of the others. Only *binding*
descriptors reject: shadow and quota-mode ones do not, and nothing does
under the global shadow mode. A binding descriptor the over-limit cache
knows to be over rejects the request without a store call; the others are
then answered OK without a current limit, since they were not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ratelimit_ext.errors import StoreError
from ratelimit_ext.overlimit import OverLimitCache
from ratelimit_ext.policy.model import Domain, FailurePolicy, Window
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store
from ratelimit_ext.store.health import StoreHealth
from ratelimit_ext.store.memory import MemoryStore
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import NO_LIMIT, Code, DescriptorVerdict


@dataclass(frozen=True, slots=True)
class Limited:
    """A descriptor whose windows are known and must be counted.

    ``detail`` is the metric label of a ``detailed_metric`` rule's descriptor.
    """

    windows: tuple[Window, ...]
    name: str | None
    subject: str
    hits: int
    shadow: bool = False
    quota_mode: bool = False
    replaces: tuple[str, ...] = ()
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CountingSettings:
    failure_policy: FailurePolicy = FailurePolicy.UNAVAILABLE
    replicas: int = 1
    overlimit_cache: bool = True
    all_or_nothing: bool = False
    """The default for domains that do not set ``all_or_nothing`` themselves."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")


class LimitCounter:
    def __init__(
        self,
        store: Store,
        telemetry: Telemetry,
        settings: CountingSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self._settings = settings
        self._clock = clock
        self.cache = OverLimitCache(clock) if settings.overlimit_cache else None
        self.health = StoreHealth(store.name)
        self._local: MemoryStore | None = None

    async def count(
        self,
        domain: Domain | None,
        limited: Sequence[Limited],
        *,
        enforcing: bool = True,
    ) -> list[DescriptorVerdict]:
        """Verdicts for ``limited``, in order; ``enforcing`` False: global shadow."""
        verdicts: list[DescriptorVerdict | None] = [
            self._cached(item) for item in limited
        ]
        together = enforcing and len(limited) > 1 and self._all_or_nothing(domain)
        if together and any(
            v is not None and _binding(i)
            for i, v in zip(limited, verdicts, strict=True)
        ):
            return [
                _uncounted(i) if v is None else v
                for i, v in zip(limited, verdicts, strict=True)
            ]
        pending = [i for i, v in zip(limited, verdicts, strict=True) if v is None]
        if not pending:
            return [v for v in verdicts if v is not None]
        fresh = iter(await self._count_in_store(domain, pending, together))
        return [next(fresh) if v is None else v for v in verdicts]

    def _all_or_nothing(self, domain: Domain | None) -> bool:
        if domain is not None and domain.all_or_nothing is not None:
            return domain.all_or_nothing
        return self._settings.all_or_nothing

    def _cached(self, item: Limited) -> DescriptorVerdict | None:
        if self.cache is None:
            return None
        found = self.cache.lookup(item.subject, item.windows, item.hits)
        if found is None:
            return None
        window, seconds_left = found
        return _over(item, window, seconds_left)

    async def _count_in_store(
        self, domain: Domain | None, items: Sequence[Limited], together: bool
    ) -> list[DescriptorVerdict]:
        started = time.perf_counter()
        try:
            results = await _hit(self._store, items, together)
        except StoreError as exc:
            self._telemetry.record_store(time.perf_counter() - started, exc)
            self.health.failed(exc)
            return await self._degraded(domain, items, together, exc)
        self._telemetry.record_store(time.perf_counter() - started)
        self.health.succeeded()
        if self.cache is not None:
            for item, result in zip(items, results, strict=True):
                if not result.allowed:
                    self.cache.remember(item.subject, item.windows, item.hits, result)
        return [verdict_of(i, r) for i, r in zip(items, results, strict=True)]

    async def _degraded(
        self,
        domain: Domain | None,
        items: Sequence[Limited],
        together: bool,
        error: StoreError,
    ) -> list[DescriptorVerdict]:
        """Verdicts under the failure policy; re-raises for ``unavailable``."""
        policy = (domain and domain.failure_policy) or self._settings.failure_policy
        self._telemetry.record_failure_policy(policy.value, len(items))
        if policy is FailurePolicy.UNAVAILABLE:
            raise error
        if policy is FailurePolicy.ALLOW:
            return [NO_LIMIT for _ in items]
        if policy is FailurePolicy.DENY:
            return [_over(i, i.windows[0], self._until_window_end(i)) for i in items]
        local = [self._share(item) for item in items]
        results = await _hit(self._local_store(), local, together)
        return [verdict_of(i, r) for i, r in zip(local, results, strict=True)]

    def _share(self, item: Limited) -> Limited:
        """This replica's share of every limit: ceil(limit / replicas)."""
        replicas = self._settings.replicas
        windows = tuple(
            replace(w, limit=math.ceil(w.limit / replicas)) for w in item.windows
        )
        return replace(item, windows=windows)

    def _local_store(self) -> MemoryStore:
        if self._local is None:
            self._local = MemoryStore(self._clock)
        return self._local

    def _until_window_end(self, item: Limited) -> float:
        period = item.windows[0].unit.seconds
        return period - self._clock() % period


async def _hit(
    store: Store, items: Sequence[Limited], together: bool
) -> list[CounterResult]:
    """One store call: the items as one group, or each alone."""
    requests = [
        CounterRequest(i.subject, i.windows, i.hits, _binding(i)) for i in items
    ]
    if together:
        (results,) = await store.hit_groups([requests])
        return results
    return await store.hit(requests)


def _binding(item: Limited) -> bool:
    """Whether the item's refusal rejects the request (all or nothing)."""
    return not (item.shadow or item.quota_mode)


def _uncounted(item: Limited) -> DescriptorVerdict:
    """Not counted: another descriptor rejected the request (all or nothing)."""
    return DescriptorVerdict(Code.OK, name=item.name, quota_mode=item.quota_mode)


def _over(item: Limited, window: Window, reset_seconds: float) -> DescriptorVerdict:
    return DescriptorVerdict(
        code=Code.OK if item.shadow else Code.OVER_LIMIT,
        window=window,
        name=item.name,
        remaining=0,
        reset_seconds=reset_seconds,
        over_limit=True,
        quota_mode=item.quota_mode,
    )


def verdict_of(item: Limited, result: CounterResult) -> DescriptorVerdict:
    """The refusing window (longest reset), else the one closest to its limit."""
    pairs = list(zip(item.windows, result.windows, strict=True))
    if not result.allowed:
        refused = [p for p in pairs if not p[1].allowed] or pairs
        window, state = max(refused, key=lambda p: p[1].reset_seconds)
        return _over(item, window, state.reset_seconds)
    window, state = min(pairs, key=lambda p: (p[1].remaining, p[1].reset_seconds))
    return DescriptorVerdict(
        code=Code.OK,
        window=window,
        name=item.name,
        remaining=state.remaining,
        reset_seconds=state.reset_seconds,
        quota_mode=item.quota_mode,
    )
