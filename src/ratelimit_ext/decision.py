"""The decision engine: from a rate-limit question to a verdict.

This is the one place that turns matched rules into counter requests and
counter results into per-descriptor answers. It knows nothing of gRPC or of
any particular store: the service adapters translate protos into
``RateLimitQuery`` and back, and the store behind ``Store`` does the counting.
A ``StoreError`` is not handled here; the adapters decide what a failure means.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ratelimit_ext.errors import StoreError
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledDomain
from ratelimit_ext.policy.model import Window
from ratelimit_ext.policy.rules import Caller
from ratelimit_ext.store.base import CounterRequest, CounterResult, Store
from ratelimit_ext.store.health import StoreHealth
from ratelimit_ext.telemetry import Telemetry

UNLIMITED_REMAINING = 4_294_967_295
UNKNOWN_DOMAIN = "_unknown"
"""Metric label for domains the policy does not define (request-chosen text)."""


class Code(enum.Enum):
    OK = 1
    OVER_LIMIT = 2


@dataclass(frozen=True, slots=True)
class DescriptorQuery:
    """One request descriptor: its entries, and the request's own knobs."""

    entries: tuple[tuple[str, str], ...]
    override: Window | None = None
    hits: int | None = None


@dataclass(frozen=True, slots=True)
class RateLimitQuery:
    domain: str
    descriptors: tuple[DescriptorQuery, ...]
    hits: int = 1


@dataclass(frozen=True, slots=True)
class DescriptorVerdict:
    """The answer for one descriptor.

    ``window`` is the limit reported back (``current_limit``): the window that
    refused the request, or else the one closest to its limit. ``None`` means
    no limit applied (then ``remaining`` is 0, or ``UNLIMITED_REMAINING`` for an
    ``unlimited`` rule).
    """

    code: Code
    window: Window | None = None
    name: str | None = None
    remaining: int = 0
    reset_seconds: float = 0.0
    over_limit: bool = False
    quota_mode: bool = False


NO_LIMIT = DescriptorVerdict(Code.OK)
UNLIMITED = DescriptorVerdict(Code.OK, remaining=UNLIMITED_REMAINING)


@dataclass(frozen=True, slots=True)
class Verdict:
    code: Code
    descriptors: tuple[DescriptorVerdict, ...]

    def tightest(self) -> DescriptorVerdict | None:
        """The limited descriptor closest to (or furthest over) its limit."""
        limited = [d for d in self.descriptors if d.window is not None]
        if not limited:
            return None
        return min(limited, key=lambda d: (d.remaining, -d.reset_seconds))


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A descriptor whose limit is known and must be counted."""

    windows: tuple[Window, ...]
    name: str | None
    subject: str
    hits: int
    shadow: bool = False
    quota_mode: bool = False
    replaces: tuple[str, ...] = ()


def subject_of(*parts: str) -> str:
    """An unambiguous counter subject: each part length-prefixed."""
    return "".join(f"{len(part)}:{part}" for part in parts)


class DecisionEngine:
    """Decides rate-limit queries against the active policy and a store."""

    def __init__(
        self,
        policy: ActivePolicy,
        store: Store,
        telemetry: Telemetry,
        *,
        shadow_mode: bool = False,
    ) -> None:
        self._policy = policy
        self._store = store
        self._telemetry = telemetry
        self._shadow_mode = shadow_mode
        self.store_health = StoreHealth(store.name)

    async def decide(
        self, query: RateLimitQuery, caller: Caller | None = None
    ) -> Verdict:
        """Answer ``ShouldRateLimit``; raises ``StoreError`` if counting failed."""
        compiled = self._policy.current.domains.get(query.domain)
        if compiled is None:
            verdict = Verdict(Code.OK, tuple(NO_LIMIT for _ in query.descriptors))
            self._telemetry.record_decision(UNKNOWN_DOMAIN, verdict.code.name)
            return verdict
        caller = self._caller_for(compiled, query, caller)
        resolved = [
            self._resolve(compiled, query, d, caller) for d in query.descriptors
        ]
        _apply_replaces(resolved)
        counted = [r for r in resolved if isinstance(r, _Resolved)]
        results = iter(await self._count(counted))
        verdicts = tuple(
            _verdict(r, next(results)) if isinstance(r, _Resolved) else r
            for r in resolved
        )
        verdict = Verdict(self._overall(verdicts), verdicts)
        self._telemetry.record_decision(query.domain, verdict.code.name)
        return verdict

    async def check_caller(self, domain: str, caller: Caller, hits: int = 1) -> Verdict:
        """Apply the caller's tier windows of ``domain`` (enforcement in Check)."""
        compiled = self._policy.current.domains.get(domain)
        windows = _tier_windows(compiled, caller.tier) if compiled else ()
        if compiled is None or not windows or caller.identity is None:
            return Verdict(Code.OK, (NO_LIMIT,))
        windows = compiled.rules.apply(windows, None, caller, ())
        subject = subject_of("check", domain, caller.identity)
        resolved = _Resolved(windows, caller.tier, subject, hits)
        (result,) = await self._count([resolved])
        verdict = _verdict(resolved, result)
        code = Code.OK if self._shadow_mode else verdict.code
        self._telemetry.record_decision(domain, code.name)
        return Verdict(code, (verdict,))

    def _caller_for(
        self, compiled: CompiledDomain, query: RateLimitQuery, caller: Caller | None
    ) -> Caller:
        """The caller as far as this request tells: the authorizer's, else entries."""
        if caller is not None:
            return caller
        domain = compiled.domain
        identity = tier = None
        for descriptor in query.descriptors:
            for key, value in descriptor.entries:
                if key == domain.identity_key and identity is None:
                    identity = value
                elif key == domain.tier_key and tier is None:
                    tier = value
        if identity is None and tier is None:
            return Caller()
        record = self._policy.current.keys_by_identity.get(identity or "")
        attributes = dict(record.attributes) if record else {}
        if tier is None and record is not None:
            tier = record.tier
        return Caller(identity, tier, attributes)

    def _resolve(
        self,
        compiled: CompiledDomain,
        query: RateLimitQuery,
        descriptor: DescriptorQuery,
        caller: Caller,
    ) -> _Resolved | DescriptorVerdict:
        hits = query.hits if descriptor.hits is None else descriptor.hits
        if descriptor.override is not None:
            override = descriptor.override
            subject = subject_of(
                query.domain,
                *_flatten(descriptor.entries),
                f"override:{override.limit}/{override.unit.name}",
            )
            return _Resolved((override,), None, subject, hits)
        match = compiled.matcher.match(descriptor.entries)
        if match is None or match.rule.rate_limit is None:
            return NO_LIMIT
        rate_limit = match.rule.rate_limit
        if rate_limit.unlimited:
            return UNLIMITED
        windows = rate_limit.windows
        if rate_limit.from_tier:
            windows = _tier_windows(compiled, _tier_of(compiled, descriptor, caller))
            windows = windows or rate_limit.windows
        if compiled.rules:
            windows = compiled.rules.apply(
                windows, rate_limit.name, caller, descriptor.entries
            )
        if not windows:
            return NO_LIMIT
        return _Resolved(
            windows=windows,
            name=rate_limit.name,
            subject=subject_of(query.domain, *_flatten(match.counted_entries)),
            hits=hits,
            shadow=match.rule.shadow_mode,
            quota_mode=match.rule.quota_mode,
            replaces=rate_limit.replaces,
        )

    async def _count(self, resolved: Sequence[_Resolved]) -> list[CounterResult]:
        if not resolved:
            return []
        requests = [CounterRequest(r.subject, r.windows, r.hits) for r in resolved]
        started = time.perf_counter()
        try:
            results = await self._store.hit(requests)
        except StoreError as exc:
            self._telemetry.record_store(time.perf_counter() - started, ok=False)
            self.store_health.failed(exc)
            raise
        self._telemetry.record_store(time.perf_counter() - started, ok=True)
        self.store_health.succeeded()
        return results

    def _overall(self, verdicts: Sequence[DescriptorVerdict]) -> Code:
        if self._shadow_mode:
            return Code.OK
        if any(v.code is Code.OVER_LIMIT and not v.quota_mode for v in verdicts):
            return Code.OVER_LIMIT
        quota = [v for v in verdicts if v.quota_mode]
        if quota and all(v.over_limit for v in quota):
            return Code.OVER_LIMIT
        return Code.OK


def _flatten(entries: Sequence[tuple[str, str]]) -> list[str]:
    return [part for entry in entries for part in entry]


def _tier_of(
    compiled: CompiledDomain, descriptor: DescriptorQuery, caller: Caller
) -> str | None:
    for key, value in descriptor.entries:
        if key == compiled.domain.tier_key:
            return value
    return caller.tier


def _tier_windows(compiled: CompiledDomain, name: str | None) -> tuple[Window, ...]:
    domain = compiled.domain
    tier = domain.tier(name) or domain.tier(domain.default_tier)
    return tier.windows if tier is not None else ()


def _apply_replaces(resolved: list[_Resolved | DescriptorVerdict]) -> None:
    """Drop every limit named by another matched limit's ``replaces``."""
    replaced = {
        name for r in resolved if isinstance(r, _Resolved) for name in r.replaces
    }
    if not replaced:
        return
    for index, r in enumerate(resolved):
        if isinstance(r, _Resolved) and r.name in replaced:
            resolved[index] = NO_LIMIT


def _verdict(resolved: _Resolved, result: CounterResult) -> DescriptorVerdict:
    pairs = list(zip(resolved.windows, result.windows, strict=True))
    if result.allowed:
        window, state = min(pairs, key=lambda p: (p[1].remaining, p[1].reset_seconds))
    else:
        refused = [p for p in pairs if not p[1].allowed] or pairs
        window, state = max(refused, key=lambda p: p[1].reset_seconds)
    over = not result.allowed
    return DescriptorVerdict(
        code=Code.OVER_LIMIT if over and not resolved.shadow else Code.OK,
        window=window,
        name=resolved.name,
        remaining=0 if over else state.remaining,
        reset_seconds=state.reset_seconds,
        over_limit=over,
        quota_mode=resolved.quota_mode,
    )
