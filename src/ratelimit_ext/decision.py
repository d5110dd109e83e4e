"""The decision engine: from a rate-limit question to a verdict.

This is the one place that turns a request's descriptors into limits: the
matching rule, overrides, ``unlimited``, tier windows, business rules,
``replaces`` and bypass grants; then, from the per-descriptor verdicts of
``LimitCounter``, the overall code (shadow rules, quota mode, the global
shadow switch). It knows nothing of gRPC or of stores: the service adapters
translate protos into ``RateLimitQuery`` and back. A ``StoreError`` that the
failure policy turns into ``unavailable`` comes out of ``decide`` for the
adapters to answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ratelimit_ext.counting import LimitCounter, Limited
from ratelimit_ext.logs import bind_request
from ratelimit_ext.policy.bypass import Bypass, BypassIndex, scale_windows
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledDomain
from ratelimit_ext.policy.matcher import Match
from ratelimit_ext.policy.model import BypassMode, Window
from ratelimit_ext.policy.rules import Caller
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import NO_LIMIT, UNLIMITED, Code, DescriptorVerdict, Verdict

UNKNOWN_DOMAIN = "_unknown"
"""Metric label for domains the policy does not define (request-chosen text)."""
DETAIL_VALUE_CHARS = 128
"""Of each descriptor value in a ``detailed_metric`` label, at most this much."""


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


def subject_of(*parts: str) -> str:
    """An unambiguous counter subject: each part length-prefixed."""
    return "".join(f"{len(part)}:{part}" for part in parts)


class DecisionEngine:
    """Decides rate-limit queries against the active policy and a store.

    ``clock`` (Unix seconds) decides which bypass grants are in force.
    """

    def __init__(
        self,
        policy: ActivePolicy,
        counter: LimitCounter,
        telemetry: Telemetry,
        *,
        shadow_mode: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self.counter = counter
        self._telemetry = telemetry
        self._shadow_mode = shadow_mode
        self._clock = clock

    async def decide(
        self, query: RateLimitQuery, caller: Caller | None = None
    ) -> Verdict:
        """Answer ``ShouldRateLimit``; raises ``StoreError`` if counting failed."""
        current = self._policy.current
        bind_request(query.domain, current.policy.digest)
        compiled = current.domains.get(query.domain)
        if compiled is None:
            verdict = Verdict(Code.OK, tuple(NO_LIMIT for _ in query.descriptors))
            self._telemetry.record_decision(UNKNOWN_DOMAIN, verdict.code.name)
            return verdict
        caller = self._caller_for(compiled, query, caller)
        resolved = [
            self._resolve(compiled, query, d, caller) for d in query.descriptors
        ]
        _apply_replaces(resolved)
        bypass = current.bypass
        if bypass is not None:
            self._apply_bypass(bypass, query, caller, resolved)
        limited = [r for r in resolved if isinstance(r, Limited)]
        answers = await self.counter.count(
            compiled.domain, limited, enforcing=not self._shadow_mode
        )
        self._record_limits(query.domain, limited, answers)
        counted = iter(answers)
        verdicts = tuple(
            next(counted) if isinstance(r, Limited) else r for r in resolved
        )
        verdict = Verdict(self._overall(verdicts), verdicts)
        self._telemetry.record_decision(query.domain, verdict.code.name)
        return verdict

    async def check_caller(self, domain: str, caller: Caller, hits: int = 1) -> Verdict:
        """Apply the caller's tier windows of ``domain`` (enforcement in Check)."""
        current = self._policy.current
        bind_request(domain, current.policy.digest)
        compiled = current.domains.get(domain)
        windows = _tier_windows(compiled, caller.tier) if compiled else ()
        if compiled is None or not windows or caller.identity is None:
            return Verdict(Code.OK, (NO_LIMIT,))
        windows = compiled.rules.apply(windows, None, caller, ())
        found = self._caller_bypass(domain, caller)
        if found is not None and found.mode is BypassMode.FULL:
            self._telemetry.record_decision(domain, Code.OK.name)
            return Verdict(Code.OK, (UNLIMITED,))
        if found is not None:
            windows = scale_windows(windows, found.factor)
        subject = subject_of("check", domain, caller.identity)
        limited = Limited(windows, caller.tier, subject, hits)
        (verdict,) = await self.counter.count(compiled.domain, [limited])
        self._record_limits(domain, (limited,), (verdict,))
        code = Code.OK if self._shadow_mode else verdict.code
        self._telemetry.record_decision(domain, code.name)
        return Verdict(code, (verdict,))

    def _record_limits(
        self,
        domain: str,
        limited: Sequence[Limited],
        verdicts: Sequence[DescriptorVerdict],
    ) -> None:
        """Per rule: the answer, and whether it was near the limit or shadowed.

        Near: admitted with at most 10% of the window's capacity left.
        """
        telemetry = self._telemetry
        for item, verdict in zip(limited, verdicts, strict=True):
            ok = verdict.code is Code.OK
            telemetry.record_rule(
                domain, item.name, "OK" if ok else "OVER_LIMIT", item.detail
            )
            window = verdict.window
            if verdict.over_limit:
                if ok or self._shadow_mode:
                    telemetry.record_shadow_block(domain, item.name)
            elif window is not None and verdict.remaining * 10 <= (
                window.burst or window.limit
            ):
                telemetry.record_near_limit(domain, item.name)

    def _caller_bypass(self, domain: str, caller: Caller) -> Bypass | None:
        """The grant or emergency level covering this caller now, counted."""
        index = self._policy.current.bypass
        found = (
            None if index is None else index.for_caller(domain, caller, self._clock())
        )
        if found is not None:
            self._telemetry.record_bypass(found.mode.value, found.kind)
        return found

    def _apply_bypass(
        self,
        index: BypassIndex,
        query: RateLimitQuery,
        caller: Caller,
        resolved: list[Limited | DescriptorVerdict],
    ) -> None:
        """Lift (``full``) or scale (``partial``) each limit a bypass covers now."""
        now = self._clock()
        for_caller = index.for_caller(query.domain, caller, now)
        for position, descriptor in enumerate(query.descriptors):
            item = resolved[position]
            if not isinstance(item, Limited):
                continue
            found = index.for_descriptor(query.domain, descriptor.entries, now)
            if for_caller is not None and for_caller.outranks(found):
                found = for_caller
            if found is not None:
                self._telemetry.record_bypass(found.mode.value, found.kind)
                resolved[position] = _bypassed(item, found)

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
    ) -> Limited | DescriptorVerdict:
        hits = query.hits if descriptor.hits is None else descriptor.hits
        if descriptor.override is not None:
            override = descriptor.override
            subject = subject_of(
                query.domain,
                *_flatten(descriptor.entries),
                f"override:{override.limit}/{override.unit.name}",
            )
            return Limited((override,), None, subject, hits)
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
        return Limited(
            windows=windows,
            name=rate_limit.name,
            subject=subject_of(query.domain, *_flatten(match.counted_entries)),
            hits=hits,
            shadow=match.rule.shadow_mode,
            quota_mode=match.rule.quota_mode,
            replaces=rate_limit.replaces,
            detail=_detail(match) if match.rule.detailed_metric else None,
        )

    def _overall(self, verdicts: Sequence[DescriptorVerdict]) -> Code:
        if self._shadow_mode:
            return Code.OK
        if any(v.code is Code.OVER_LIMIT and not v.quota_mode for v in verdicts):
            return Code.OVER_LIMIT
        quota = [v for v in verdicts if v.quota_mode]
        if quota and all(v.over_limit for v in quota):
            return Code.OVER_LIMIT
        return Code.OK


def _detail(match: Match) -> str:
    """A ``detailed_metric`` rule's label: its counted entries, values shortened."""
    return ",".join(
        f"{key}={value[:DETAIL_VALUE_CHARS]}" for key, value in match.counted_entries
    )


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


def _bypassed(item: Limited, found: Bypass) -> Limited | DescriptorVerdict:
    """``full``: reported as ``unlimited``, not counted; ``partial``: scaled."""
    if found.mode is BypassMode.FULL:
        return replace(UNLIMITED, quota_mode=True) if item.quota_mode else UNLIMITED
    return replace(item, windows=scale_windows(item.windows, found.factor))


def _apply_replaces(resolved: list[Limited | DescriptorVerdict]) -> None:
    """Drop every limit named by another matched limit's ``replaces``."""
    replaced = {name for r in resolved if isinstance(r, Limited) for name in r.replaces}
    if not replaced:
        return
    for index, r in enumerate(resolved):
        if isinstance(r, Limited) and r.name in replaced:
            resolved[index] = NO_LIMIT
