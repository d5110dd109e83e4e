"""A policy prepared for the request path, and the slot that holds the live one.

Compiling does all the per-policy work once: matcher trees, CEL programs,
the API key indexes and the bypass grant index (``None`` without grants).
Requests read ``ActivePolicy.current`` once at their start and use that
snapshot to the end, so a swap never changes a decision half-way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ratelimit_ext.policy.bypass import BypassIndex
from ratelimit_ext.policy.matcher import DomainMatcher
from ratelimit_ext.policy.model import ApiKey, Domain, Policy
from ratelimit_ext.policy.rules import RuleSet


@dataclass(frozen=True, slots=True)
class CompiledDomain:
    domain: Domain
    matcher: DomainMatcher
    rules: RuleSet

    @classmethod
    def build(cls, domain: Domain) -> CompiledDomain:
        return cls(domain, DomainMatcher(domain), RuleSet(domain.name, domain.rules))


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy: Policy
    domains: dict[str, CompiledDomain]
    keys_by_digest: dict[str, ApiKey]
    keys_by_identity: dict[str, ApiKey]
    bypass: BypassIndex | None = None

    @classmethod
    def build(cls, policy: Policy) -> CompiledPolicy:
        domains = {d.name: CompiledDomain.build(d) for d in policy.domains}
        usable = [key for key in policy.api_keys if not key.disabled]
        by_identity: dict[str, ApiKey] = {}
        for key in usable:
            by_identity.setdefault(key.identity, key)
        return cls(
            policy=policy,
            domains=domains,
            keys_by_digest={key.sha256: key for key in usable},
            keys_by_identity=by_identity,
            bypass=BypassIndex.build(policy),
        )


class ActivePolicy:
    """The compiled policy in force; replaced whole, never edited."""

    __slots__ = ("current",)

    def __init__(self, initial: CompiledPolicy) -> None:
        self.current = initial

    def swap(self, new: CompiledPolicy) -> CompiledPolicy:
        old, self.current = self.current, new
        return old
