"""The policy as values: what the YAML files say, parsed and validated.

Every object here is frozen. A ``Policy`` is built whole by the loader and then
shared read-only by every request until the next reload swaps in another one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Unit(enum.Enum):
    """A window length, as envoyproxy/ratelimit names it.

    week, month and year are fixed 7, 30 and 365 day windows aligned to the
    Unix epoch, exactly as envoyproxy/ratelimit computes them.
    """

    SECOND = 1
    MINUTE = 60
    HOUR = 3600
    DAY = 86400
    WEEK = 7 * 86400
    MONTH = 30 * 86400
    YEAR = 365 * 86400

    # Members are singletons: identity hashing is correct and, unlike Enum's
    # default (hashing the name in Python code), costs no Python call. Windows
    # are hashed on every request (counter and cache keys).
    __hash__ = object.__hash__

    @property
    def seconds(self) -> int:
        return self.value

    @classmethod
    def parse(cls, text: str) -> Unit:
        """Case-insensitive lookup; raises ``KeyError`` for an unknown unit."""
        return cls[text.strip().upper()]


class Algorithm(enum.Enum):
    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"
    TOKEN_BUCKET = "token_bucket"

    __hash__ = object.__hash__  # see Unit


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value was written: shown in every error and in the admin API."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Window:
    """One counted window of a limit: at most ``limit`` hits per ``unit``.

    ``burst`` only matters to the token bucket: the bucket holds ``burst``
    tokens (default ``limit``) and refills ``limit`` tokens per ``unit``.
    """

    limit: int
    unit: Unit
    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    burst: int | None = None

    @property
    def capacity(self) -> int:
        if self.algorithm is Algorithm.TOKEN_BUCKET and self.burst is not None:
            return self.burst
        return self.limit


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A descriptor's ``rate_limit`` block.

    Either ``unlimited``, or one window (``requests_per_unit`` per ``unit``),
    or ``from_tier``: the windows come from the caller's tier at request time
    (then ``windows`` holds the fallback used when no tier is known, possibly
    empty).
    """

    windows: tuple[Window, ...]
    name: str | None = None
    unlimited: bool = False
    from_tier: bool = False
    replaces: tuple[str, ...] = ()
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class DescriptorRule:
    """One node of a domain's ``descriptors`` tree."""

    key: str
    value: str | None
    rate_limit: RateLimit | None
    children: tuple[DescriptorRule, ...] = ()
    shadow_mode: bool = False
    quota_mode: bool = False
    detailed_metric: bool = False
    value_to_metric: bool = False
    share_threshold: bool = False
    metadata: tuple[tuple[str, Any], ...] = ()
    source: Source | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.value is not None and "*" in self.value


@dataclass(frozen=True, slots=True)
class Tier:
    """A named customer tier: several windows checked and committed together."""

    name: str
    windows: tuple[Window, ...]
    source: Source | None = None


class FailurePolicy(enum.Enum):
    """What a decision is when the counter store cannot answer.

    ``unavailable`` (the default) answers gRPC UNAVAILABLE so that Envoy's
    ``failure_mode_deny`` decides; ``allow`` fails open; ``deny`` answers
    OVER_LIMIT; ``local`` counts in process memory with every limit divided
    by the number of server replicas until the store answers again.
    """

    UNAVAILABLE = "unavailable"
    ALLOW = "allow"
    DENY = "deny"
    LOCAL = "local"


class RuleAction(enum.Enum):
    MULTIPLY = "multiply"
    ADD = "add"
    SET = "set"


@dataclass(frozen=True, slots=True)
class BusinessRule:
    """``when`` (a CEL expression) holds -> change the limit.

    The CEL source is kept here; the compiled program lives in the matcher's
    compiled domain so that the model stays plain data.
    """

    name: str
    when: str
    action: RuleAction
    amount: float
    rollout_percent: float = 100.0
    limit_names: tuple[str, ...] = ()
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    descriptors: tuple[DescriptorRule, ...]
    tiers: tuple[Tier, ...] = ()
    default_tier: str | None = None
    tier_key: str = "tier"
    identity_key: str = "user_id"
    rules: tuple[BusinessRule, ...] = ()
    failure_policy: FailurePolicy | None = None
    all_or_nothing: bool | None = None
    """A rejected request consumes none of its descriptors; None: server default."""
    source: Source | None = None

    def tier(self, name: str | None) -> Tier | None:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        return None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of an ``api_keys:`` file. Only the key's SHA-256 is kept."""

    sha256: str
    identity: str
    tier: str | None = None
    attributes: tuple[tuple[str, Any], ...] = ()
    disabled: bool = False
    source: Source | None = None

    def __repr__(self) -> str:  # never print a digest in full
        return f"ApiKey(identity={self.identity!r}, sha256={self.sha256[:8]}...)"


class BypassMode(enum.Enum):
    FULL = "full"
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class BypassSubject:
    """Who or what a grant covers: exactly one of the fields is set.

    ``descriptor`` is a domain plus the entries of a request descriptor
    (``((key, value), ...)``; a value of ``None`` matches any value).
    """

    identity: str | None = None
    api_key_sha256: str | None = None
    tier: str | None = None
    domain: str | None = None
    descriptor: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class BypassGrant:
    """A temporary exemption from limits, with who asked, why and until when.

    ``full`` lifts the limits; ``partial`` multiplies them by ``factor``. A
    grant counts only between ``starts_at`` and ``expires_at`` (Unix seconds),
    and, when ``requires_approval``, only once ``approved_by`` is set (by an
    actor other than ``actor``).
    """

    id: str
    subject: BypassSubject
    mode: BypassMode
    reason: str
    actor: str
    starts_at: float
    expires_at: float
    factor: float = 1.0
    requires_approval: bool = False
    approved_by: str | None = None
    source: Source | None = None

    def active(self, now: float) -> bool:
        approved = not self.requires_approval or self.approved_by is not None
        return approved and self.starts_at <= now < self.expires_at


@dataclass(frozen=True, slots=True)
class EmergencyLevel:
    """Let ``percent`` of identities (stable hashing) bypass limits until expiry.

    ``domain`` of ``None`` applies to every domain.
    """

    id: str
    percent: float
    reason: str
    actor: str
    starts_at: float
    expires_at: float
    domain: str | None = None
    source: Source | None = None

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.expires_at


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything loaded from one config path, validated together."""

    domains: tuple[Domain, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    bypass_grants: tuple[BypassGrant, ...] = ()
    emergency_levels: tuple[EmergencyLevel, ...] = ()
    files: tuple[str, ...] = ()
    digest: str = ""
    by_domain: dict[str, Domain] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.by_domain:
            object.__setattr__(self, "by_domain", {d.name: d for d in self.domains})
