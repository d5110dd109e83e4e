"""Business rules: CEL conditions that change a limit for some callers.

A rule's condition sees three variables:

``caller``
    a map with ``identity``, ``tier`` and every attribute of the caller's API
    key entry (absent when unknown: test with ``has(caller.plan)``);
``descriptor``
    a map of the request descriptor's entries (key -> value);
``domain``
    the domain name.

A condition that fails to evaluate (a missing field, a type mismatch) counts
as false: a rule can only change a limit when it positively holds. Rules run
in file order, each on the result of the previous one. ``rollout_percent``
selects a stable share of identities by hashing ``rule name + identity``, so
the same caller stays in or out of an A/B rollout across requests, replicas
and reloads; a caller without identity is never in a partial rollout.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cel

from ratelimit_ext.policy.model import BusinessRule, RuleAction, Window

logger = logging.getLogger(__name__)

_EVALUATION_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, OverflowError)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as the request tells.

    ``key_sha256`` is the digest of the API key presented, known only to the
    authorizer (``Check``); it is not shown to CEL rules.
    """

    identity: str | None = None
    tier: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    key_sha256: str | None = field(default=None, repr=False)

    def as_cel(self) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.attributes)
        if self.identity is not None:
            values["identity"] = self.identity
        if self.tier is not None:
            values["tier"] = self.tier
        return values


def rollout_bucket(rule_name: str, identity: str) -> float:
    """A stable number in [0, 100) for this rule and identity."""
    digest = hashlib.blake2b(f"{rule_name}\0{identity}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % 10_000 / 100


class CompiledRule:
    __slots__ = ("_program", "rule")

    def __init__(self, rule: BusinessRule) -> None:
        self.rule = rule
        self._program = cel.compile(rule.when)

    def covers(self, limit_name: str | None) -> bool:
        names = self.rule.limit_names
        return not names or (limit_name is not None and limit_name in names)

    def holds(self, caller: Caller, context: dict[str, Any]) -> bool:
        if not self._in_rollout(caller):
            return False
        try:
            return self._program.execute(context) is True
        except _EVALUATION_ERRORS as exc:
            logger.debug("rule %s did not evaluate: %s", self.rule.name, exc)
            return False

    def adjust(self, limit: int) -> int:
        amount = self.rule.amount
        if self.rule.action is RuleAction.MULTIPLY:
            return max(0, int(limit * amount))
        if self.rule.action is RuleAction.ADD:
            return max(0, limit + int(amount))
        return max(0, int(amount))

    def _in_rollout(self, caller: Caller) -> bool:
        percent = self.rule.rollout_percent
        if percent >= 100:
            return True
        if caller.identity is None:
            return False
        return rollout_bucket(self.rule.name, caller.identity) < percent


class RuleSet:
    """The compiled business rules of one domain."""

    __slots__ = ("_domain", "_rules")

    def __init__(self, domain: str, rules: Sequence[BusinessRule]) -> None:
        self._domain = domain
        self._rules = tuple(CompiledRule(rule) for rule in rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def apply(
        self,
        windows: tuple[Window, ...],
        limit_name: str | None,
        caller: Caller,
        entries: Sequence[tuple[str, str]],
    ) -> tuple[Window, ...]:
        """The windows after every rule that covers this limit and holds."""
        context: dict[str, Any] | None = None
        for compiled in self._rules:
            if not compiled.covers(limit_name):
                continue
            if context is None:
                context = {
                    "caller": caller.as_cel(),
                    "descriptor": dict(entries),
                    "domain": self._domain,
                }
            if compiled.holds(caller, context):
                windows = tuple(
                    replace(w, limit=compiled.adjust(w.limit)) for w in windows
                )
        return windows
