"""Descriptor matching: which configured rule applies to a request descriptor.

The semantics are envoyproxy/ratelimit's. A request descriptor is a list of
``(key, value)`` entries; the domain's rule tree is walked one level per entry.
At each level the first of these that exists wins, with no backtracking:

1. the rule with exactly this key and value,
2. the first rule (in file order) with this key whose wildcard value matches,
3. the rule with this key and no value (the default).

A rule's limit applies only if the rule sits at the depth of the last entry.
The tree is compiled once per policy load into dicts and regexes, so a lookup
costs a dict probe per entry (plus the wildcards of a level, when no exact
rule exists).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ratelimit_ext.policy.model import DescriptorRule, Domain


@dataclass(frozen=True, slots=True)
class Match:
    """The rule that applies to a descriptor, and how to name its counter.

    ``counted_entries`` are the request's entries, except that a value matched
    by a ``share_threshold`` wildcard is replaced by the pattern, so all values
    matching it share one counter.
    """

    rule: DescriptorRule
    counted_entries: tuple[tuple[str, str], ...]


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches zero or more characters, anywhere, any number of times."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.S)


class _Level:
    """The rules of one tree level, indexed for lookup."""

    __slots__ = ("defaults", "exact", "wildcards")

    def __init__(self, rules: Sequence[DescriptorRule]) -> None:
        self.exact: dict[tuple[str, str], _Node] = {}
        self.defaults: dict[str, _Node] = {}
        self.wildcards: dict[str, list[tuple[re.Pattern[str], _Node]]] = {}
        for rule in rules:
            node = _Node(rule)
            if rule.value is None:
                self.defaults.setdefault(rule.key, node)
            elif rule.is_wildcard:
                pattern = wildcard_regex(rule.value)
                self.wildcards.setdefault(rule.key, []).append((pattern, node))
            else:
                self.exact.setdefault((rule.key, rule.value), node)

    def find(self, key: str, value: str) -> _Node | None:
        node = self.exact.get((key, value))
        if node is not None:
            return node
        for pattern, candidate in self.wildcards.get(key, ()):
            if pattern.fullmatch(value):
                return candidate
        return self.defaults.get(key)


class _Node:
    __slots__ = ("children", "rule")

    def __init__(self, rule: DescriptorRule) -> None:
        self.rule = rule
        self.children = _Level(rule.children) if rule.children else None


class DomainMatcher:
    """Finds the rule for request descriptors of one domain."""

    __slots__ = ("_root",)

    def __init__(self, domain: Domain) -> None:
        self._root = _Level(domain.descriptors)

    def match(self, entries: Sequence[tuple[str, str]]) -> Match | None:
        level: _Level | None = self._root
        last = len(entries) - 1
        counted: list[tuple[str, str]] = []
        for depth, (key, value) in enumerate(entries):
            if level is None:
                return None
            node = level.find(key, value)
            if node is None:
                return None
            rule = node.rule
            shared = rule.value if rule.share_threshold and rule.value else None
            counted.append((key, shared or value))
            if depth == last:
                if rule.rate_limit is None:
                    return None
                return Match(rule, tuple(counted))
            level = node.children
        return None
