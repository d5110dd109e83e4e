"""Policy files load into a validated Policy, or fail naming file and line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from ratelimit_ext.errors import PolicyError, Problem
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import (
    Algorithm,
    FailurePolicy,
    RuleAction,
    Unit,
    Window,
)

REPO = Path(__file__).resolve().parents[2]
DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.problems


def only_problem(path: Path) -> Problem:
    found = problems(path)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def assert_only_problem(path: Path, line: int, fragment: str) -> None:
    problem = only_problem(path)
    assert (problem.file, problem.line) == (str(path), line), str(problem)
    assert fragment in problem.message, str(problem)


# --- validation errors, one per test --------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "where"),
    [
        ("domain: d\nlimits: []\n", 2, "domain policy"),
        ("domain: d\ndescriptors:\n  - key: k\n    vaule: v\n", 4, "descriptor"),
        (
            "domain: d\ndescriptors:\n  - key: k\n"
            "    rate_limit: {unit: second, requests_per_unit: 1, per: 2}\n",
            4,
            "rate_limit",
        ),
        (
            "domain: d\ntiers:\n  - name: t\n    colour: red\n"
            "    limits: [{unit: day, requests_per_unit: 1}]\n",
            4,
            "tier",
        ),
        (
            "domain: d\ntiers:\n  - name: t\n"
            "    limits: [{unit: day, requests_per_unit: 1, extra: 1}]\n",
            4,
            "tier window",
        ),
        (
            "domain: d\nrules:\n  - name: r\n    when: 'true'\n    add: 1\n"
            "    priority: 3\n",
            6,
            "rule",
        ),
        (f"api_keys:\n  - sha256: {DIGEST_A}\n    identity: a\n    role: x\n", 4, ""),
        ("api_keys: []\nextra: 1\n", 2, "API keys file"),
    ],
)
def test_unknown_key_is_reported_with_the_allowed_keys(
    tmp_path: Path, text: str, line: int, where: str
) -> None:
    """Unknown keys at every level are named, with their line and the allowed keys."""
    path = write(tmp_path, "p.yaml", text)
    problem = only_problem(path)
    assert problem.line == line
    assert "unknown key" in problem.message
    assert "allowed:" in problem.message
    assert where in problem.message


def test_empty_domain_name(tmp_path: Path) -> None:
    """An empty domain name is reported on its line."""
    path = write(tmp_path, "p.yaml", "# c\ndomain: ''\n")
    assert_only_problem(path, 2, "'domain' must not be empty")


def test_duplicate_domain_is_reported_in_both_files(tmp_path: Path) -> None:
    """A domain defined twice names the other place in each file."""
    first = write(tmp_path, "a.yaml", "domain: api\n")
    second = write(tmp_path, "b.yaml", "# second\ndomain: api\n")
    found = [str(p) for p in problems(tmp_path)]
    assert found == [
        f"{first}:1: domain 'api' is defined again at {second}:2",
        f"{second}:2: domain 'api' is already defined at {first}:1",
    ]


def test_empty_descriptor_key(tmp_path: Path) -> None:
    """An empty descriptor key is reported on its line."""
    path = write(tmp_path, "p.yaml", "domain: d\ndescriptors:\n  - key: ''\n")
    assert_only_problem(path, 3, "'key' must not be empty")


def test_missing_descriptor_key(tmp_path: Path) -> None:
    """A descriptor without a key is reported where the descriptor starts."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: a
          - value: v
        """,
    )
    assert_only_problem(path, 4, "missing required key 'key'")


def test_duplicate_sibling_descriptors(tmp_path: Path) -> None:
    """Two siblings with the same key and value: the second one is reported."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            value: v
          - key: k
            value: w
          - key: k
            value: v
        """,
    )
    assert_only_problem(path, 7, "key 'k' with value 'v' is already defined at line 3")


def test_duplicate_value_less_descriptors(tmp_path: Path) -> None:
    """Two value-less siblings with the same key are duplicates too."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
          - key: k
        """,
    )
    assert_only_problem(path, 4, "key 'k' with no value")


def test_same_descriptor_at_different_levels_is_allowed(tmp_path: Path) -> None:
    """Only siblings must differ; a child may repeat its parent's key and value."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            value: v
            descriptors:
              - key: k
                value: v
        """,
    )
    assert load_policy(path).domains[0].descriptors[0].children[0].key == "k"


def test_bad_unit(tmp_path: Path) -> None:
    """An unknown unit lists the valid ones."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: fortnight
              requests_per_unit: 1
        """,
    )
    assert_only_problem(path, 5, "unknown unit 'fortnight'; expected one of: second")


def test_missing_unit(tmp_path: Path) -> None:
    """A window without a unit is reported where the rate_limit starts."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              requests_per_unit: 1
        """,
    )
    assert_only_problem(path, 5, "missing required key 'unit'")


def test_missing_requests_per_unit(tmp_path: Path) -> None:
    """A limited rate_limit needs requests_per_unit."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
        """,
    )
    assert_only_problem(path, 5, "missing required key 'requests_per_unit'")


def test_negative_requests_per_unit(tmp_path: Path) -> None:
    """requests_per_unit below zero is refused on its line."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              requests_per_unit: -1
        """,
    )
    assert_only_problem(path, 6, "'requests_per_unit' must be >= 0, got -1")


@pytest.mark.parametrize("written", ["1.5", "'5'", "ten", "[1]", "true"])
def test_non_integer_requests_per_unit(tmp_path: Path, written: str) -> None:
    """Floats, quoted numbers, words, lists and booleans are not integers."""
    path = write(
        tmp_path,
        "p.yaml",
        f"""
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              requests_per_unit: {written}
        """,
    )
    assert_only_problem(path, 6, "'requests_per_unit' must be an integer")


def test_zero_requests_per_unit_is_allowed(tmp_path: Path) -> None:
    """A limit of zero blocks everything and is valid."""
    path = write(
        tmp_path,
        "p.yaml",
        "domain: d\ndescriptors:\n"
        "  - {key: k, rate_limit: {unit: second, requests_per_unit: 0}}\n",
    )
    rate_limit = load_policy(path).domains[0].descriptors[0].rate_limit
    assert rate_limit is not None
    assert rate_limit.windows == (Window(0, Unit.SECOND),)


@pytest.mark.parametrize(
    ("written", "key"),
    [("unit: second", "unit"), ("requests_per_unit: 3", "requests_per_unit")],
)
def test_unlimited_with_a_window(tmp_path: Path, written: str, key: str) -> None:
    """unlimited: true refuses unit and requests_per_unit."""
    path = write(
        tmp_path,
        "p.yaml",
        f"""
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unlimited: true
              {written}
        """,
    )
    assert_only_problem(path, 6, f"'{key}' cannot be used with unlimited: true")


def test_unlimited_alone_has_no_windows(tmp_path: Path) -> None:
    """unlimited: true builds a RateLimit without windows."""
    path = write(
        tmp_path,
        "p.yaml",
        "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unlimited: true}}\n",
    )
    rate_limit = load_policy(path).domains[0].descriptors[0].rate_limit
    assert rate_limit is not None
    assert (rate_limit.unlimited, rate_limit.windows) == (True, ())


def test_replaces_empty_list(tmp_path: Path) -> None:
    """replaces: [] is refused."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              requests_per_unit: 1
              replaces: []
        """,
    )
    assert_only_problem(path, 7, "'replaces' must not be an empty list")


def test_replaces_empty_name(tmp_path: Path) -> None:
    """A replaces entry with an empty name is refused on its line."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              requests_per_unit: 1
              replaces:
                - name: other
                - name: ""
        """,
    )
    assert_only_problem(path, 9, "'name' must not be empty")


def test_replaces_itself(tmp_path: Path) -> None:
    """A rate limit naming itself in replaces is refused."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              name: mine
              unit: second
              requests_per_unit: 1
              replaces:
                - name: mine
        """,
    )
    assert_only_problem(path, 9, "rate limit 'mine' cannot replace itself")


def test_share_threshold_without_wildcard(tmp_path: Path) -> None:
    """share_threshold needs a value with a '*'."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: path
            value: /exact
            share_threshold: true
            rate_limit: {unit: second, requests_per_unit: 1}
        """,
    )
    assert_only_problem(path, 5, "share_threshold needs a wildcard value")


def test_share_threshold_with_wildcard_is_allowed(tmp_path: Path) -> None:
    """A '*' anywhere in the value makes share_threshold valid."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: path
            value: /a/*/b
            share_threshold: true
            rate_limit: {unit: second, requests_per_unit: 1}
        """,
    )
    rule = load_policy(path).domains[0].descriptors[0]
    assert rule.share_threshold and rule.is_wildcard


def test_burst_without_token_bucket(tmp_path: Path) -> None:
    """burst on a fixed window is refused on its line."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              requests_per_unit: 1
              burst: 4
        """,
    )
    assert_only_problem(path, 7, "'burst' needs algorithm: token_bucket")


def test_burst_below_one(tmp_path: Path) -> None:
    """A token bucket's burst must hold at least one token."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              requests_per_unit: 1
              algorithm: token_bucket
              burst: 0
        """,
    )
    assert_only_problem(path, 8, "'burst' must be >= 1, got 0")


def test_unknown_algorithm(tmp_path: Path) -> None:
    """An unknown algorithm lists the valid ones."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              requests_per_unit: 1
              algorithm: leaky_bucket
        """,
    )
    assert_only_problem(path, 7, "expected one of: fixed_window, sliding_window")


def test_from_tier_without_tiers(tmp_path: Path) -> None:
    """from_tier needs the domain to define tiers."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: user_id
            rate_limit:
              from_tier: true
        """,
    )
    assert_only_problem(path, 5, "from_tier needs tiers")


def test_from_tier_with_half_a_fallback_window(tmp_path: Path) -> None:
    """A from_tier fallback window needs both unit and requests_per_unit."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        tiers:
          - {name: t, limits: [{unit: day, requests_per_unit: 1}]}
        descriptors:
          - key: user_id
            rate_limit:
              from_tier: true
              unit: minute
        """,
    )
    assert_only_problem(path, 7, "missing required key 'requests_per_unit'")


def test_from_tier_algorithm_without_fallback_window(tmp_path: Path) -> None:
    """algorithm has nothing to apply to when from_tier has no fallback window."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        tiers:
          - {name: t, limits: [{unit: day, requests_per_unit: 1}]}
        descriptors:
          - key: user_id
            rate_limit:
              from_tier: true
              algorithm: token_bucket
        """,
    )
    assert_only_problem(path, 8, "'algorithm' applies to the fallback window")


def test_tier_with_duplicate_units(tmp_path: Path) -> None:
    """A tier has at most one window per unit (unit names are case-insensitive)."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        tiers:
          - name: free
            limits:
              - {unit: minute, requests_per_unit: 10}
              - {unit: MINUTE, requests_per_unit: 20}
        """,
    )
    assert_only_problem(path, 6, "this tier already has a 'minute' window")


def test_duplicate_tier_names(tmp_path: Path) -> None:
    """Tier names are unique within a domain."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        tiers:
          - {name: free, limits: [{unit: day, requests_per_unit: 1}]}
          - {name: free, limits: [{unit: day, requests_per_unit: 2}]}
        """,
    )
    assert_only_problem(path, 4, "tier 'free' is already defined at line 3")


def test_tier_without_limits(tmp_path: Path) -> None:
    """A tier needs a non-empty limits list."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        tiers:
          - name: free
            limits: []
          - name: pro
        """,
    )
    found = [(p.line, p.message) for p in problems(path)]
    assert found == [
        (4, "a tier needs at least one window in 'limits'"),
        (5, "missing required key 'limits'"),
    ]


def test_tier_burst_without_token_bucket_window(tmp_path: Path) -> None:
    """A tier's default burst needs one of its windows to be a token bucket."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        tiers:
          - name: free
            burst: 5
            limits:
              - {unit: minute, requests_per_unit: 10}
        """,
    )
    assert_only_problem(path, 4, "tier 'burst' needs a window with algorithm")


def test_unknown_default_tier(tmp_path: Path) -> None:
    """default_tier must name a tier of the domain."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        default_tier: gold
        tiers:
          - {name: free, limits: [{unit: day, requests_per_unit: 1}]}
        """,
    )
    assert_only_problem(path, 2, "default_tier 'gold' is not a defined tier")


def test_rule_with_invalid_cel(tmp_path: Path) -> None:
    """A rule's condition must compile; the CEL error text is reported."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        rules:
          - name: r
            when: "caller.plan =="
            multiply: 2
        """,
    )
    problem = only_problem(path)
    assert problem.line == 4
    assert "'when' is not valid CEL" in problem.message
    assert "Syntax error" in problem.message


def test_rule_without_action(tmp_path: Path) -> None:
    """A rule needs one of multiply, add, set."""
    path = write(tmp_path, "p.yaml", "domain: d\nrules:\n  - {name: r, when: 'true'}\n")
    assert_only_problem(path, 3, "exactly one of multiply, add, set (got none)")


def test_rule_with_several_actions(tmp_path: Path) -> None:
    """Several actions are reported at the second one."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        rules:
          - name: r
            when: "true"
            multiply: 2
            set: 5
        """,
    )
    assert_only_problem(path, 6, "(got multiply, set)")


@pytest.mark.parametrize(
    ("action", "written", "expected"),
    [
        ("multiply", "0", "a number > 0"),
        ("multiply", "-1.5", "a number > 0"),
        ("add", "1.5", "an integer"),
        ("set", "-1", "an integer >= 0"),
        ("set", "lots", "an integer >= 0"),
    ],
)
def test_rule_with_bad_amount(
    tmp_path: Path, action: str, written: str, expected: str
) -> None:
    """Each action's amount is checked on its line."""
    path = write(
        tmp_path,
        "p.yaml",
        f"domain: d\nrules:\n  - name: r\n    when: 'true'\n    {action}: {written}\n",
    )
    assert_only_problem(path, 5, f"'{action}' must be {expected}")


@pytest.mark.parametrize("written", ["101", "-1", "half"])
def test_rule_with_bad_rollout(tmp_path: Path, written: str) -> None:
    """rollout_percent is a number in 0..100."""
    path = write(
        tmp_path,
        "p.yaml",
        "domain: d\nrules:\n  - name: r\n    when: 'true'\n    add: 1\n"
        f"    rollout_percent: {written}\n",
    )
    assert_only_problem(path, 6, "'rollout_percent' must be")


def test_rule_with_unknown_limit_name(tmp_path: Path) -> None:
    """A rule's limits must name rate limits of its domain."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            rate_limit: {name: known, unit: second, requests_per_unit: 1}
        rules:
          - name: r
            when: "true"
            add: 1
            limits:
              - known
              - unknown
        """,
    )
    assert_only_problem(path, 11, "no rate_limit named 'unknown'")


def test_duplicate_rule_names(tmp_path: Path) -> None:
    """Rule names are unique within a domain."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        rules:
          - {name: r, when: "true", add: 1}
          - {name: r, when: "false", add: 2}
        """,
    )
    assert_only_problem(path, 4, "rule 'r' is already defined at line 3")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("domain: d\ndescriptors: {key: k}\n", 2, "'descriptors' must be a list"),
        ("domain: d\ndescriptors:\n  - k\n", 3, "descriptor must be a mapping"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: 5\n",
            4,
            "rate_limit must be a mapping",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: 'yes'\n",
            4,
            "'shadow_mode' must be true or false",
        ),
        ("domain: [d]\n", 1, "'domain' must be a string"),
        ("domain: d\ntiers: free\n", 2, "'tiers' must be a list"),
        ("domain: d\nrules: {}\n", 2, "'rules' must be a list"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    metadata: [1]\n",
            4,
            "'metadata' must be a mapping",
        ),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    """A node of the wrong kind is reported on its line."""
    path = write(tmp_path, "p.yaml", text)
    assert_only_problem(path, line, fragment)


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    """A key written twice in one mapping is an error, not "last one wins"."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        descriptors:
          - key: k
            key: j
        """,
    )
    assert_only_problem(path, 4, "duplicate key 'key' (first at line 3)")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is reported at the parser's mark."""
    path = write(tmp_path, "p.yaml", "domain: d\ndescriptors:\n  - key: [a\n\n")
    problem = only_problem(path)
    assert (problem.file, problem.line) == (str(path), 5)
    assert problem.message.startswith("invalid YAML:")


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported on their line."""
    path = tmp_path / "p.yaml"
    path.write_bytes(b"domain: d\n# caf\xe9\n")
    assert_only_problem(path, 2, "invalid YAML")


def test_several_documents_in_one_file(tmp_path: Path) -> None:
    """One file holds one document."""
    path = write(tmp_path, "p.yaml", "domain: a\n---\ndomain: b\n")
    assert_only_problem(path, 2, "expected a single document")


@pytest.mark.parametrize("text", ["descriptors: []\n", "- domain: d\n", "just text\n"])
def test_file_that_is_neither_kind(tmp_path: Path, text: str) -> None:
    """A file must be a domain policy or an API keys file."""
    path = write(tmp_path, "p.yaml", text)
    assert_only_problem(path, 1, "not a policy file")


def test_missing_path(tmp_path: Path) -> None:
    """A path that does not exist is a problem at line 0."""
    path = tmp_path / "nope.yaml"
    assert_only_problem(path, 0, "no such file or directory")


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    """Loading goes on after a problem: all files, all problems, in file order."""
    write(
        tmp_path,
        "a.yaml",
        "domain: a\ndescriptors:\n  - {key: ''}\n  - {key: k, x: 1}\n",
    )
    write(tmp_path, "b.yaml", "domain: b\ndefault_tier: t\n")
    write(tmp_path, "c.yaml", "api_keys:\n  - {sha256: nothex, identity: ''}\n")
    found = [(Path(p.file).name, p.line) for p in problems(tmp_path)]
    assert found == [
        ("a.yaml", 3),
        ("a.yaml", 4),
        ("b.yaml", 2),
        ("c.yaml", 2),
        ("c.yaml", 2),
    ]


# --- API keys files -------------------------------------------------------------


def test_api_key_with_bad_digest(tmp_path: Path) -> None:
    """sha256 must be 64 hex characters."""
    path = write(
        tmp_path,
        "keys.yaml",
        """
        api_keys:
          - sha256: 9f86d081
            identity: alice
        """,
    )
    assert_only_problem(path, 2, "'sha256' must be a SHA-256 hex digest")


def test_api_key_without_identity(tmp_path: Path) -> None:
    """identity is required."""
    path = write(tmp_path, "keys.yaml", f"api_keys:\n  - sha256: {DIGEST_A}\n")
    assert_only_problem(path, 2, "missing required key 'identity'")


def test_api_key_with_empty_identity(tmp_path: Path) -> None:
    """identity must not be empty."""
    path = write(
        tmp_path, "keys.yaml", f"api_keys:\n  - sha256: {DIGEST_A}\n    identity:\n"
    )
    assert_only_problem(path, 3, "'identity' must not be empty")


def test_duplicate_api_key_across_files(tmp_path: Path) -> None:
    """The same digest in two files is reported in both, matching case-insensitively."""
    first = write(
        tmp_path, "a.yaml", f"api_keys:\n  - {{sha256: {DIGEST_A}, identity: a}}\n"
    )
    second = write(
        tmp_path,
        "b.yaml",
        f"api_keys:\n  - {{sha256: {DIGEST_B}, identity: b}}\n"
        f"  - {{sha256: {DIGEST_A.upper()}, identity: c}}\n",
    )
    found = [str(p) for p in problems(tmp_path)]
    assert found == [
        f"{first}:2: api key sha256 aaaaaaaa... is defined again at {second}:3",
        f"{second}:3: api key sha256 aaaaaaaa... is already defined at {first}:2",
    ]


def test_api_keys_are_loaded(tmp_path: Path) -> None:
    """Digests are lowercased; tier, attributes and disabled are kept."""
    path = write(
        tmp_path,
        "keys.yaml",
        f"""
        api_keys:
          - sha256: {DIGEST_A.upper()}
            identity: alice
            tier: pro
            attributes: {{plan: partner, seats: 5}}
            disabled: true
          - sha256: {DIGEST_B}
            identity: bob
        """,
    )
    alice, bob = load_policy(path).api_keys
    assert alice.sha256 == DIGEST_A
    assert (alice.identity, alice.tier, alice.disabled) == ("alice", "pro", True)
    assert alice.attributes == (("plan", "partner"), ("seats", 5))
    assert (bob.tier, bob.attributes, bob.disabled) == (None, (), False)
    assert DIGEST_A not in repr(alice)


# --- envoyproxy/ratelimit compatibility -----------------------------------------


def test_envoyproxy_style_config_parses(tmp_path: Path) -> None:
    """Nested descriptors, defaults, unlimited, replaces and flags load as written."""
    path = write(
        tmp_path,
        "config.yaml",
        """
        ---
        domain: edge
        descriptors:
          - key: authenticated
            value: "false"
            descriptors:
              - key: remote_address
                rate_limit:
                  unit: Minute
                  requests_per_unit: 30
              - key: remote_address
                value: 192.168.1.1
                rate_limit:
                  unlimited: true
          - key: client_id
            value: acme
            detailed_metric: true
            rate_limit:
              name: acme
              unit: HOUR
              requests_per_unit: 1000
              replaces:
                - name: generic
          - key: generic_key
            value: "*"
            quota_mode: true
            value_to_metric: true
            metadata:
              owner: team-a
              tags: [x, y]
            rate_limit:
              name: generic
              unit: day
              requests_per_unit: 10
        """,
    )
    domain = load_policy(path).domains[0]
    authenticated, client, generic = domain.descriptors
    default_ip, unlimited_ip = authenticated.children
    assert (authenticated.key, authenticated.value) == ("authenticated", "false")
    assert default_ip.value is None
    assert default_ip.rate_limit is not None
    assert default_ip.rate_limit.windows == (Window(30, Unit.MINUTE),)
    assert unlimited_ip.rate_limit is not None and unlimited_ip.rate_limit.unlimited
    assert client.detailed_metric
    assert client.rate_limit is not None
    assert client.rate_limit.replaces == ("generic",)
    assert client.rate_limit.windows[0].unit is Unit.HOUR
    assert generic.quota_mode and generic.value_to_metric and generic.is_wildcard
    assert generic.metadata == (("owner", "team-a"), ("tags", ["x", "y"]))
    assert default_ip.source is not None and default_ip.source.line == 7


@pytest.mark.parametrize(
    ("written", "kept"),
    [("10", "10"), ("010", "010"), ("1.50", "1.50"), ("true", "true"), ("~", None)],
)
def test_values_keep_their_written_text(
    tmp_path: Path, written: str, kept: str | None
) -> None:
    """value: 10 is the string "10", as envoyproxy/ratelimit reads it."""
    path = write(
        tmp_path,
        "p.yaml",
        f"domain: d\ndescriptors:\n  - key: k\n    value: {written}\n",
    )
    assert load_policy(path).domains[0].descriptors[0].value == kept


@pytest.mark.parametrize("unit", ["second", "SECOND", "Second", "sEcOnD"])
def test_units_are_case_insensitive(tmp_path: Path, unit: str) -> None:
    """Units are matched without regard to case."""
    path = write(
        tmp_path,
        "p.yaml",
        f"domain: d\ndescriptors:\n  - {{key: k, rate_limit: {{unit: {unit}, "
        "requests_per_unit: 1}}\n",
    )
    rate_limit = load_policy(path).domains[0].descriptors[0].rate_limit
    assert rate_limit is not None
    assert rate_limit.windows[0].unit is Unit.SECOND


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "~\n"])
def test_empty_files_are_skipped(tmp_path: Path, text: str) -> None:
    """An empty file or document loads as nothing, without an error."""
    path = write(tmp_path, "p.yaml", text)
    policy = load_policy(path)
    assert (policy.domains, policy.api_keys, policy.files) == ((), (), (str(path),))


# --- our extensions -------------------------------------------------------------


def test_tiers_rules_and_from_tier_build_the_model(tmp_path: Path) -> None:
    """Tier defaults reach their windows; rules and from_tier are kept."""
    path = write(
        tmp_path,
        "p.yaml",
        """
        domain: d
        tier_key: plan
        identity_key: account
        default_tier: free
        tiers:
          - name: free
            algorithm: sliding_window
            burst: 7
            limits:
              - {unit: second, requests_per_unit: 2, algorithm: token_bucket}
              - {unit: minute, requests_per_unit: 10, algorithm: token_bucket, burst: 3}
              - {unit: day, requests_per_unit: 100}
        descriptors:
          - key: account
            rate_limit:
              name: per-account
              from_tier: true
              unit: minute
              requests_per_unit: 5
              algorithm: token_bucket
              burst: 9
        rules:
          - name: partners
            when: "caller.plan == 'partner'"
            multiply: 1.5
            rollout_percent: 25
            limits: [per-account]
        """,
    )
    domain = load_policy(path).domains[0]
    assert (domain.tier_key, domain.identity_key, domain.default_tier) == (
        "plan",
        "account",
        "free",
    )
    tier = domain.tier("free")
    assert tier is not None
    assert tier.windows == (
        Window(2, Unit.SECOND, Algorithm.TOKEN_BUCKET, 7),
        Window(10, Unit.MINUTE, Algorithm.TOKEN_BUCKET, 3),
        Window(100, Unit.DAY, Algorithm.SLIDING_WINDOW, None),
    )
    rate_limit = domain.descriptors[0].rate_limit
    assert rate_limit is not None and rate_limit.from_tier
    assert rate_limit.windows == (Window(5, Unit.MINUTE, Algorithm.TOKEN_BUCKET, 9),)
    (rule,) = domain.rules
    assert (rule.action, rule.amount, rule.rollout_percent) == (
        RuleAction.MULTIPLY,
        1.5,
        25.0,
    )
    assert rule.limit_names == ("per-account",)


def test_domain_defaults(tmp_path: Path) -> None:
    """Without our extensions a domain gets the documented defaults."""
    domain = load_policy(write(tmp_path, "p.yaml", "domain: d\n")).domains[0]
    assert (domain.tier_key, domain.identity_key, domain.default_tier) == (
        "tier",
        "user_id",
        None,
    )
    assert (domain.descriptors, domain.tiers, domain.rules) == ((), (), ())


# --- directories ----------------------------------------------------------------


def test_directory_is_loaded_recursively_in_relative_path_order(
    tmp_path: Path,
) -> None:
    """*.yaml and *.yml files load in sorted relative-path order; others are ignored."""
    write(tmp_path, "b.yaml", "domain: b\n")
    write(tmp_path, "a/z.yml", "domain: az\n")
    write(tmp_path, "a/deeper/c.YAML", "domain: adc\n")
    write(tmp_path, "notes.txt", "domain: ignored\n")
    write(tmp_path, "a/readme.md", "not yaml")
    policy = load_policy(tmp_path)
    assert [d.name for d in policy.domains] == ["adc", "az", "b"]
    assert policy.files == (
        os.path.join(tmp_path, "a", "deeper", "c.YAML"),
        os.path.join(tmp_path, "a", "z.yml"),
        os.path.join(tmp_path, "b.yaml"),
    )


def test_dot_entries_are_skipped_at_every_level(tmp_path: Path) -> None:
    """Hidden files and directories are never read, however deep."""
    write(tmp_path, "p.yaml", "domain: d\n")
    write(tmp_path, ".hidden.yaml", "domain: [broken\n")
    write(tmp_path, ".git/x.yaml", "domain: [broken\n")
    write(tmp_path, "sub/.swap.yaml", "domain: [broken\n")
    write(tmp_path, "sub/..2024_01_01/x.yaml", "domain: [broken\n")
    assert load_policy(tmp_path).files == (str(tmp_path / "p.yaml"),)


def test_kubernetes_configmap_mount_is_loaded_once(tmp_path: Path) -> None:
    """..data and ..<timestamp> are skipped; the visible symlinks are followed."""
    stamp = tmp_path / "..2024_01_01_00_00_00.000000001"
    write(stamp, "policy.yaml", "domain: api\n")
    write(stamp, "keys.yaml", f"api_keys:\n  - {{sha256: {DIGEST_A}, identity: a}}\n")
    (tmp_path / "..data").symlink_to(stamp.name)
    for name in ("policy.yaml", "keys.yaml"):
        (tmp_path / name).symlink_to(Path("..data") / name)
    policy = load_policy(tmp_path)
    assert [d.name for d in policy.domains] == ["api"]
    assert len(policy.api_keys) == 1
    assert policy.files == (str(tmp_path / "keys.yaml"), str(tmp_path / "policy.yaml"))


def test_symlinked_directory_loop_terminates(tmp_path: Path) -> None:
    """A directory symlink back up the tree is not walked forever."""
    write(tmp_path, "sub/p.yaml", "domain: d\n")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)
    assert [d.name for d in load_policy(tmp_path).domains] == ["d"]


def test_files_are_reported_with_the_path_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Problems and Policy.files use the path the caller passed, joined as given."""
    write(tmp_path, "conf/p.yaml", "domain: ''\n")
    write(tmp_path, "ok/p.yaml", "domain: d\n")
    monkeypatch.chdir(tmp_path)
    assert load_policy("ok").files == (os.path.join("ok", "p.yaml"),)
    assert str(only_problem(Path("conf"))).startswith(os.path.join("conf", "p.yaml:1:"))


def test_empty_directory_loads_an_empty_policy(tmp_path: Path) -> None:
    """A directory without policy files is valid and empty."""
    policy = load_policy(tmp_path)
    assert (policy.domains, policy.api_keys, policy.files) == ((), (), ())


# --- digest ---------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        write(root, name, text)
    return root


def test_digest_is_stable_across_locations_and_creation_order(tmp_path: Path) -> None:
    """The digest depends on relative names and bytes only."""
    files = {"a.yaml": "domain: a\n", "sub/b.yaml": "domain: b\n"}
    one = make_tree(tmp_path / "one", files)
    two = make_tree(tmp_path / "two", dict(reversed(files.items())))
    digest = load_policy(one).digest
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert load_policy(two).digest == digest
    assert load_policy(one).digest == digest


@pytest.mark.parametrize(
    "changed",
    [
        {"a.yaml": "domain: a \n", "sub/b.yaml": "domain: b\n"},
        {"a.yaml": "domain: a\n", "sub/c.yaml": "domain: b\n"},
        {"a.yaml": "domain: a\n", "sub/b.yaml": "domain: b\n", "c.yaml": ""},
        {"a.yaml": "domain: a\n# a comment\n", "sub/b.yaml": "domain: b\n"},
        {"a.yaml": "domain: a\n", "other/b.yaml": "domain: b\n"},
    ],
)
def test_digest_changes_with_content_or_names(
    tmp_path: Path, changed: dict[str, str]
) -> None:
    """Any change of bytes, names or the set of files changes the digest."""
    base = make_tree(
        tmp_path / "base", {"a.yaml": "domain: a\n", "sub/b.yaml": "domain: b\n"}
    )
    other = make_tree(tmp_path / "other", changed)
    assert load_policy(other).digest != load_policy(base).digest


def test_digest_of_a_single_file_ignores_its_directory(tmp_path: Path) -> None:
    """A file path's digest uses the file name, not where the file lives."""
    one = write(tmp_path / "x", "p.yaml", "domain: a\n")
    two = write(tmp_path / "y", "p.yaml", "domain: a\n")
    assert load_policy(one).digest == load_policy(two).digest


# --- the shipped example and key hashing ----------------------------------------


def test_example_config_loads() -> None:
    """config/ (the README's example) loads cleanly with every feature shown."""
    policy = load_policy(REPO / "config")
    (domain,) = policy.domains
    assert domain.name == "api"
    assert [t.name for t in domain.tiers] == ["free", "basic", "pro", "enterprise"]
    for tier in domain.tiers:
        assert {w.unit for w in tier.windows} == {Unit.MINUTE, Unit.HOUR, Unit.DAY}
    assert any(w.burst for t in domain.tiers for w in t.windows)
    rate_limits = [r.rate_limit for r in domain.descriptors if r.rate_limit]
    assert any(rl.from_tier for rl in rate_limits)
    assert any(rl.unlimited for rl in rate_limits)
    assert any(rl.replaces for rl in rate_limits)
    assert any(r.shadow_mode for r in domain.descriptors)
    assert any(r.is_wildcard for r in domain.descriptors)
    assert len(domain.rules) == 1
    assert len(policy.api_keys) == 3


@pytest.mark.parametrize(
    "key", ["demo-free-key", "demo-pro-key", "demo-enterprise-key"]
)
def test_example_api_keys_match_the_documented_demo_keys(key: str) -> None:
    """Each demo key named in the comment hashes to an entry of config/api_keys.yaml."""
    text = (REPO / "config" / "api_keys.yaml").read_text(encoding="utf-8")
    assert key in text
    digests = {
        k.sha256 for k in load_policy(REPO / "config" / "api_keys.yaml").api_keys
    }
    assert hash_key(key) in digests


@pytest.mark.parametrize(
    ("key", "digest"),
    [
        ("test", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ],
)
def test_hash_key_vectors(key: str, digest: str) -> None:
    """hash_key is the SHA-256 hex digest of the key's UTF-8 bytes."""
    assert hash_key(key) == digest


def test_failure_policy_is_parsed(tmp_path: Path) -> None:
    """A domain's failure_policy is read case-insensitively."""
    path = write(tmp_path, "p.yaml", "domain: d\nfailure_policy: Local\n")
    assert load_policy(path).domains[0].failure_policy is FailurePolicy.LOCAL


def test_unknown_failure_policy(tmp_path: Path) -> None:
    """An unknown failure_policy lists the valid ones."""
    path = write(tmp_path, "p.yaml", "domain: d\nfailure_policy: retry\n")
    assert_only_problem(path, 2, "expected one of: unavailable, allow, deny, local")
