"""Descriptor matching follows envoyproxy/ratelimit level by level."""

from __future__ import annotations

import pytest

from ratelimit_ext.policy.matcher import DomainMatcher, wildcard_regex
from ratelimit_ext.policy.model import DescriptorRule, Domain, RateLimit, Unit, Window


def limit(n: int, name: str | None = None) -> RateLimit:
    return RateLimit(windows=(Window(n, Unit.MINUTE),), name=name)


def rule(
    key: str,
    value: str | None = None,
    n: int | None = None,
    *children: DescriptorRule,
    share: bool = False,
) -> DescriptorRule:
    rate_limit = limit(n, f"{key}={value}") if n is not None else None
    return DescriptorRule(
        key, value, rate_limit, tuple(children), share_threshold=share
    )


def matched_limit(matcher: DomainMatcher, *entries: tuple[str, str]) -> int | None:
    match = matcher.match(entries)
    if match is None or match.rule.rate_limit is None:
        return None
    return match.rule.rate_limit.windows[0].limit


@pytest.fixture
def matcher() -> DomainMatcher:
    return DomainMatcher(
        Domain(
            "d",
            (
                rule("path", "/exact", 1),
                rule("path", "/api/*", 2),
                rule("path", "/api/v1/*", 3),
                rule("path", None, 4),
                rule("path", "*.png", 5),
                rule("path", "/a*b*c", 6),
                rule(
                    "user",
                    None,
                    None,
                    rule("route", "login", 7),
                    rule("route", None, 8),
                ),
                rule("org", "acme", None, rule("plan", None, 9)),
                rule("org", None, 10, rule("plan", "gold", 11)),
            ),
        )
    )


def test_exact_value_wins_over_wildcard_and_default(matcher: DomainMatcher) -> None:
    assert matched_limit(matcher, ("path", "/exact")) == 1


def test_first_matching_wildcard_in_file_order_wins(matcher: DomainMatcher) -> None:
    # "/api/*" is listed before "/api/v1/*" and matches first.
    assert matched_limit(matcher, ("path", "/api/v1/users")) == 2


def test_default_applies_when_nothing_else_matches(matcher: DomainMatcher) -> None:
    assert matched_limit(matcher, ("path", "/elsewhere")) == 4


def test_wildcard_anywhere_and_several_times(matcher: DomainMatcher) -> None:
    assert matched_limit(matcher, ("path", "/a-xx-b-yy-c")) == 6
    assert matched_limit(matcher, ("path", "/abc")) == 6  # '*' matches nothing
    assert matched_limit(matcher, ("path", "/a-b-c-d")) == 4


def test_wildcard_is_not_a_regex() -> None:
    pattern = wildcard_regex("a.b*")
    assert pattern.fullmatch("a.bcd")
    assert not pattern.fullmatch("axbcd")


def test_unknown_key_matches_nothing(matcher: DomainMatcher) -> None:
    assert matched_limit(matcher, ("nope", "x")) is None


def test_limit_only_at_the_depth_of_the_last_entry(matcher: DomainMatcher) -> None:
    # "user" has no limit itself; one entry matches it but yields no limit.
    assert matched_limit(matcher, ("user", "alice")) is None
    assert matched_limit(matcher, ("user", "alice"), ("route", "login")) == 7
    assert matched_limit(matcher, ("user", "alice"), ("route", "other")) == 8
    # Deeper than the tree: no limit, even though a prefix matched a limit.
    assert matched_limit(matcher, ("path", "/exact"), ("x", "y")) is None


def test_no_backtracking_after_an_exact_match(matcher: DomainMatcher) -> None:
    # org=acme matches exactly; its children have no "plan=gold", only a
    # default; the value-less "org" branch (which has plan=gold) is never tried.
    assert matched_limit(matcher, ("org", "acme"), ("plan", "gold")) == 9
    assert matched_limit(matcher, ("org", "other"), ("plan", "gold")) == 11
    assert matched_limit(matcher, ("org", "other")) == 10


def test_counted_entries_keep_runtime_values(matcher: DomainMatcher) -> None:
    match = matcher.match((("path", "/api/one"),))
    assert match is not None
    assert match.counted_entries == (("path", "/api/one"),)


def test_share_threshold_counts_all_values_together() -> None:
    shared = DomainMatcher(Domain("d", (rule("path", "/files/*", 5, share=True),)))
    one = shared.match((("path", "/files/a"),))
    two = shared.match((("path", "/files/b"),))
    assert one is not None and two is not None
    assert one.counted_entries == two.counted_entries == (("path", "/files/*"),)
