"""Bypass grants and emergency levels, indexed for the request path.

``BypassIndex.build`` sorts a policy's grants once by what they cover: an
identity, an API key digest, a tier, or a domain's descriptor keys. A policy
without grants or levels gets no index at all, so the request path pays one
``is None`` test. Whether a grant is in force is asked per request with the
engine's clock (``BypassGrant.active``), so grants start and expire on time
without a reload. Where several apply, ``full`` wins over ``partial`` and a
larger factor over a smaller one.

An API key grant needs to know which key was used. ``Check`` knows it (the
caller's ``key_sha256``); a ``ShouldRateLimit`` request names only an
identity, so there a key grant applies when that identity has exactly one
usable key, and never when it has several.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from ratelimit_ext.policy.model import (
    ApiKey,
    BypassGrant,
    BypassMode,
    EmergencyLevel,
    Policy,
    Window,
)
from ratelimit_ext.policy.rules import Caller, rollout_bucket

IDENTITY = "identity"
API_KEY = "api_key"
TIER = "tier"
DESCRIPTOR = "descriptor"
EMERGENCY = "emergency"
"""Subject kinds, as the ``kind`` of a bypass use (a metric attribute)."""

_ROUNDING = 1e-9
"""Keeps 100 * 0.29 from rounding down to 28."""


@dataclass(frozen=True, slots=True)
class Bypass:
    """What applies to a limited descriptor: lift its limits, or scale them."""

    mode: BypassMode
    factor: float
    kind: str

    def outranks(self, other: Bypass | None) -> bool:
        if other is None:
            return True
        if other.mode is BypassMode.FULL:
            return False
        return self.mode is BypassMode.FULL or self.factor > other.factor


EMERGENCY_BYPASS = Bypass(BypassMode.FULL, 1.0, EMERGENCY)


def scale_windows(windows: tuple[Window, ...], factor: float) -> tuple[Window, ...]:
    """Every limit and burst times ``factor``, rounded down; never below 1 unless 0."""
    return tuple(
        replace(
            window,
            limit=_scale(window.limit, factor),
            burst=None if window.burst is None else _scale(window.burst, factor),
        )
        for window in windows
    )


def _scale(limit: int, factor: float) -> int:
    if limit == 0:
        return 0
    return max(1, math.floor(limit * factor + _ROUNDING))


_K = TypeVar("_K")
_V = TypeVar("_V")
_Entry = tuple[BypassGrant, Bypass]
_Pattern = tuple[str | None, ...]


class BypassIndex:
    """A policy's grants by subject, and its emergency levels by domain."""

    __slots__ = (
        "_by_descriptor",
        "_by_identity",
        "_by_key",
        "_by_sole_key_of",
        "_by_tier",
        "_descriptor_domains",
        "_levels",
    )

    def __init__(
        self,
        grants: Sequence[BypassGrant],
        levels: Sequence[EmergencyLevel],
        api_keys: Sequence[ApiKey],
    ) -> None:
        entries = [(grant, _bypass_of(grant)) for grant in grants]
        self._by_identity = _group((e[0].subject.identity, e) for e in entries)
        self._by_key = _group((e[0].subject.api_key_sha256, e) for e in entries)
        self._by_tier = _group((e[0].subject.tier, e) for e in entries)
        sole = _sole_key_identities(api_keys)
        self._by_sole_key_of = _group(
            (sole.get(e[0].subject.api_key_sha256 or ""), e) for e in entries
        )
        self._by_descriptor = _descriptor_groups(entries)
        self._descriptor_domains = frozenset(
            domain for domain, _ in self._by_descriptor
        )
        self._levels = _levels_by_scope(levels)

    @classmethod
    def build(cls, policy: Policy) -> BypassIndex | None:
        """The index, or ``None`` when the policy has nothing to bypass."""
        if not policy.bypass_grants and not policy.emergency_levels:
            return None
        return cls(policy.bypass_grants, policy.emergency_levels, policy.api_keys)

    def for_caller(self, domain: str, caller: Caller, now: float) -> Bypass | None:
        """The best grant or emergency level in force for this caller and domain."""
        best = None
        if caller.identity is not None:
            best = _best(best, self._by_identity.get(caller.identity), now)
            if caller.key_sha256 is None:
                best = _best(best, self._by_sole_key_of.get(caller.identity), now)
        if caller.key_sha256 is not None:
            best = _best(best, self._by_key.get(caller.key_sha256), now)
        if caller.tier is not None:
            best = _best(best, self._by_tier.get(caller.tier), now)
        if best is not None and best.mode is BypassMode.FULL:
            return best

        return self._emergency(domain, caller.identity, now) or best

    def for_descriptor(
        self, domain: str, entries: Sequence[tuple[str, str]], now: float
    ) -> Bypass | None:
        """The best descriptor grant in force for exactly these entries."""
        if domain not in self._descriptor_domains:
            return None
        keys = tuple(key for key, _ in entries)
        best = None
        for pattern, (grant, bypass) in self._by_descriptor.get((domain, keys), ()):
            if not bypass.outranks(best) or not grant.active(now):
                continue
            if _matches(pattern, entries):
                best = bypass

        return best

    def _emergency(
        self, domain: str, identity: str | None, now: float
    ) -> Bypass | None:
        for scope in (domain, None):
            for level in self._levels.get(scope, ()):
                if level.active(now) and _selected(level, identity):
                    return EMERGENCY_BYPASS
        return None


def _best(
    best: Bypass | None, entries: Iterable[_Entry] | None, now: float
) -> Bypass | None:
    for grant, bypass in entries or ():
        if bypass.outranks(best) and grant.active(now):
            best = bypass
    return best


def _matches(pattern: _Pattern, entries: Sequence[tuple[str, str]]) -> bool:
    """Same keys (already known); each value equal, or any for ``None``."""
    return all(
        wanted is None or wanted == value
        for wanted, (_, value) in zip(pattern, entries, strict=True)
    )


def _bypass_of(grant: BypassGrant) -> Bypass:
    subject = grant.subject
    if subject.identity is not None:
        kind = IDENTITY
    elif subject.api_key_sha256 is not None:
        kind = API_KEY
    elif subject.tier is not None:
        kind = TIER
    else:
        kind = DESCRIPTOR
    return Bypass(grant.mode, grant.factor, kind)


def _group(pairs: Iterable[tuple[_K | None, _V]]) -> dict[_K, tuple[_V, ...]]:
    """Values grouped by key, in order; pairs without a key are left out."""
    groups: defaultdict[_K, list[_V]] = defaultdict(list)
    for key, value in pairs:
        if key is not None:
            groups[key].append(value)
    return {key: tuple(values) for key, values in groups.items()}


def _levels_by_scope(
    levels: Sequence[EmergencyLevel],
) -> dict[str | None, tuple[EmergencyLevel, ...]]:
    """Levels by domain; ``None`` holds those for every domain."""
    scopes: defaultdict[str | None, list[EmergencyLevel]] = defaultdict(list)
    for level in levels:
        scopes[level.domain].append(level)
    return {scope: tuple(found) for scope, found in scopes.items()}


def _sole_key_identities(api_keys: Sequence[ApiKey]) -> dict[str, str]:
    """Key digest -> identity, for identities with exactly one usable key."""
    usable = [key for key in api_keys if not key.disabled]
    counts: defaultdict[str, int] = defaultdict(int)
    for key in usable:
        counts[key.identity] += 1
    return {key.sha256: key.identity for key in usable if counts[key.identity] == 1}


def _descriptor_groups(
    entries: Sequence[_Entry],
) -> dict[tuple[str, tuple[str, ...]], tuple[tuple[_Pattern, _Entry], ...]]:
    """Descriptor grants by (domain, entry keys), each with its value pattern."""
    pairs = []
    for entry in entries:
        subject = entry[0].subject
        if subject.domain is None:
            continue
        keys = tuple(key for key, _ in subject.descriptor)
        pattern = tuple(value for _, value in subject.descriptor)
        pairs.append(((subject.domain, keys), (pattern, entry)))
    return _group(pairs)


def _selected(level: EmergencyLevel, identity: str | None) -> bool:
    """A stable ``percent`` of identities; everyone (identity or not) at 100."""
    if level.percent >= 100:
        return True
    if identity is None:
        return False
    return rollout_bucket(level.id, identity) < level.percent
