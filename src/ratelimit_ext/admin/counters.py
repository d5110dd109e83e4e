"""Usage and counter resets for one descriptor or one identity.

Usage is a decision that counts nothing: the descriptor (or the identity's
tier windows, as ``Check`` enforces them) goes through the decision engine
with ``hits_addend`` 0, so the answer is exactly what the next request would
see, rules and bypasses included.

A reset removes the counters of the subjects a descriptor or an identity is
counted under (``Resettable.reset``), and empties the over-limit cache so no
refusal is answered from memory afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

from ratelimit_ext.admin.errors import InvalidRequest, NotFound, Unsupported
from ratelimit_ext.decision import (
    DecisionEngine,
    DescriptorQuery,
    RateLimitQuery,
    subject_of,
)
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledDomain
from ratelimit_ext.policy.rules import Caller
from ratelimit_ext.store.base import Resettable, Store
from ratelimit_ext.verdict import DescriptorVerdict

Entries = tuple[tuple[str, str], ...]


class CounterAdmin:
    """Reads and resets counters of the running server."""

    def __init__(
        self, policy: ActivePolicy, engine: DecisionEngine, store: Store
    ) -> None:
        self._policy = policy
        self._engine = engine
        self._store = store

    async def usage(
        self, domain: str, entries: Entries, identity: str
    ) -> DescriptorVerdict:
        """What one more hit would get, counting nothing."""
        _check_query(domain, entries, identity)
        caller = self._caller(identity) if identity else None
        if entries:
            query = RateLimitQuery(domain, (DescriptorQuery(entries, hits=0),))
            verdict = await self._engine.decide(query, caller)
        else:
            verdict = await self._engine.check_caller(domain, caller or Caller(), 0)

        return verdict.descriptors[0]

    async def reset(
        self, domain: str, entries: Entries, identity: str
    ) -> tuple[int, int]:
        """Forget the counters; returns (subjects, store entries removed)."""
        _check_query(domain, entries, identity)
        compiled = self._policy.current.domains.get(domain)
        if compiled is None:
            raise NotFound(f"no domain {domain!r} in the policy in force")
        subjects = _subjects(compiled, entries, identity)
        removed = await _resettable(self._store).reset(subjects)
        cache = self._engine.counter.cache
        if cache is not None:
            cache.clear()

        return len(subjects), removed

    def _caller(self, identity: str) -> Caller:
        record = self._policy.current.keys_by_identity.get(identity)
        if record is None:
            return Caller(identity)
        return Caller(identity, record.tier, dict(record.attributes))


def _resettable(store: Store) -> Resettable:
    """The store itself or the one it wraps (deadline, coalescing) that resets.

    Resets go to the inner store directly: an admin call is not bound by the
    data path's deadline or circuit breaker.
    """
    found: object = store
    while not isinstance(found, Resettable):
        inner = getattr(found, "inner", None)
        if inner is None:
            raise Unsupported(f"the {store.name} store cannot reset counters")
        found = inner
    return found


def _check_query(domain: str, entries: Entries, identity: str) -> None:
    if not domain:
        raise InvalidRequest("domain: required")
    if not entries and not identity:
        raise InvalidRequest("give descriptor entries, an identity, or both")
    if any(not key for key, _ in entries):
        raise InvalidRequest("entries: every entry needs a key")


def _subjects(compiled: CompiledDomain, entries: Entries, identity: str) -> list[str]:
    """The counter subjects the engine uses for this descriptor / identity."""
    domain = compiled.domain.name
    subjects: list[str] = []
    if entries:
        match = compiled.matcher.match(entries)
        if match is None or match.rule.rate_limit is None:
            raise NotFound(f"no rule of domain {domain!r} limits that descriptor")
        subjects.append(subject_of(domain, *_flatten(match.counted_entries)))
    if identity:
        subjects.append(subject_of("check", domain, identity))
    return subjects


def _flatten(entries: Sequence[tuple[str, str]]) -> list[str]:
    return [part for entry in entries for part in entry]
