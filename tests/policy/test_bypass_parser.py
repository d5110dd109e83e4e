"""Bypass files load into grants and emergency levels, or fail at file:line."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from ratelimit_ext.errors import PolicyError, Problem
from ratelimit_ext.policy.bypass_parser import ALWAYS_STARTED
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import BypassMode, BypassSubject

DIGEST = "ab" * 32

GRANT = """
bypass_grants:
  - id: g-1
    subject: {identity: alice}
    mode: full
    reason: incident 42
    actor: ops@example.com
    expires_at: 2026-12-04T10:00:00Z
"""
"""A valid grant; each error test changes or adds one line (line 2 is ``- id``)."""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.problems


def assert_only_problem(path: Path, line: int, fragment: str) -> None:
    found = problems(path)
    assert len(found) == 1, [str(p) for p in found]
    problem = found[0]
    assert (problem.file, problem.line) == (str(path), line), str(problem)
    assert fragment in problem.message, str(problem)


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def grant_with(*lines: str, drop: str | None = None) -> str:
    """``GRANT`` without the line starting with ``drop``, plus ``lines``."""
    kept = [
        line
        for line in textwrap.dedent(GRANT).lstrip("\n").splitlines()
        if drop is None or not line.strip().startswith(drop)
    ]
    return "\n".join([*kept, *(f"    {line}" for line in lines)]) + "\n"


# --- valid files ---------------------------------------------------------------


def test_every_field_and_subject_kind_is_read(tmp_path: Path) -> None:
    """Each subject kind, both modes, approval and times come through as written."""
    write(
        tmp_path,
        "bypass.yaml",
        f"""
        bypass_grants:
          - id: g-identity
            subject: {{identity: alice}}
            mode: full
            reason: "incident 42"
            actor: ops@example.com
            starts_at: 2026-12-03T10:00:00Z
            expires_at: 2026-12-04T12:00:00+02:00
            requires_approval: true
            approved_by: lead@example.com
          - id: g-key
            subject: {{api_key_sha256: {DIGEST.upper()}}}
            mode: partial
            factor: 2.5
            reason: load test
            actor: ops@example.com
            expires_at: "2026-12-04T10:00:00.500Z"
          - id: g-tier
            subject: {{tier: gold}}
            mode: partial
            factor: 3
            reason: promotion
            actor: ops@example.com
            expires_at: 2026-12-04t10:00:00z
            approved_by: null
          - id: g-descriptor
            subject:
              domain: api
              descriptor: [{{key: k, value: 10}}, {{key: k2}}]
            mode: full
            reason: migration
            actor: ops@example.com
            expires_at: 2026-12-04 10:00:00Z
        emergency_levels:
          - {{id: e-1, percent: 10, reason: outage, actor: sre, expires_at: 2026-12-04T10:00:00Z, domain: api}}
          - {{id: e-2, percent: 100, reason: outage, actor: sre, expires_at: 2026-12-04T10:00:00Z}}
        """,  # noqa: E501
    )

    policy = load_policy(tmp_path)

    identity, key, tier, descriptor = policy.bypass_grants
    assert identity.subject == BypassSubject(identity="alice")
    assert identity.mode is BypassMode.FULL and identity.factor == 1.0
    assert identity.starts_at == unix("2026-12-03T10:00:00+00:00")
    assert identity.expires_at == unix("2026-12-04T10:00:00+00:00")
    assert identity.requires_approval and identity.approved_by == "lead@example.com"
    assert identity.source is not None and identity.source.line == 2
    assert key.subject == BypassSubject(api_key_sha256=DIGEST)
    assert (key.mode, key.factor) == (BypassMode.PARTIAL, 2.5)
    assert key.starts_at == ALWAYS_STARTED
    assert key.expires_at == unix("2026-12-04T10:00:00.5+00:00")
    assert tier.subject == BypassSubject(tier="gold")
    assert tier.factor == 3.0 and tier.approved_by is None
    assert descriptor.subject == BypassSubject(
        domain="api", descriptor=(("k", "10"), ("k2", None))
    )
    assert descriptor.expires_at == unix("2026-12-04T10:00:00+00:00")
    first, second = policy.emergency_levels
    assert (first.id, first.percent, first.domain) == ("e-1", 10.0, "api")
    assert (second.percent, second.domain) == (100.0, None)


def test_a_file_of_emergency_levels_only(tmp_path: Path) -> None:
    """``emergency_levels:`` alone is a bypass file too."""
    write(
        tmp_path,
        "levels.yaml",
        """
        emergency_levels:
          - id: e-1
            percent: 0
            reason: drill
            actor: sre
            starts_at: 2026-12-03T10:00:00Z
            expires_at: 2026-12-03T10:00:01Z
        """,
    )

    (level,) = load_policy(tmp_path).emergency_levels

    assert level.expires_at - level.starts_at == 1.0
    assert level.percent == 0.0


# --- one problem each ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param(
            grant_with("colour: red"),
            8,
            "unknown key 'colour' in bypass grant",
            id="unknown-field",
        ),
        pytest.param(
            grant_with(drop="expires_at"),
            2,
            "missing required key 'expires_at'",
            id="missing-expiry",
        ),
        pytest.param(
            grant_with("starts_at: 2026-12-04T10:00:00Z"),
            7,
            "'expires_at' must be later than 'starts_at'",
            id="expiry-at-start",
        ),
        pytest.param(
            grant_with("starts_at: 2026-12-05T00:00:00+01:00"),
            7,
            "must be later",
            id="expiry-before-start",
        ),
        pytest.param(
            grant_with("expires_at: 2026-12-04T10:00:00", drop="expires_at"),
            7,
            "'expires_at' has no timezone",
            id="no-timezone",
        ),
        pytest.param(
            grant_with("starts_at: 2026-12-03"),
            8,
            "'starts_at' has no timezone",
            id="date-only",
        ),
        pytest.param(
            grant_with("expires_at: tomorrow", drop="expires_at"),
            7,
            "'expires_at' must be an RFC 3339 timestamp",
            id="not-a-time",
        ),
        pytest.param(
            grant_with("expires_at: 1796378400", drop="expires_at"),
            7,
            "must be an RFC 3339 timestamp",
            id="unix-seconds",
        ),
        pytest.param(
            grant_with("requires_approval: true", "approved_by: OPS@example.com "),
            9,
            "'approved_by' must differ from 'actor'",
            id="self-approval",
        ),
        pytest.param(
            grant_with("approved_by: ''"),
            8,
            "'approved_by' must not be empty",
            id="empty-approver",
        ),
        pytest.param(
            grant_with("requires_approval: maybe"),
            8,
            "'requires_approval' must be true or false",
            id="approval-not-bool",
        ),
        pytest.param(
            grant_with("factor: 2"),
            8,
            "'factor' is only for mode partial",
            id="full-with-factor",
        ),
        pytest.param(
            grant_with("mode: partial", drop="mode"),
            2,
            "mode partial needs 'factor'",
            id="partial-without-factor",
        ),
        pytest.param(
            grant_with("mode: partial", "factor: 0", drop="mode"),
            8,
            "'factor' must be > 0",
            id="zero-factor",
        ),
        pytest.param(
            grant_with("mode: partial", "factor: lots", drop="mode"),
            8,
            "'factor' must be a number",
            id="factor-not-number",
        ),
        pytest.param(
            grant_with("mode: half", drop="mode"),
            7,
            "'mode' must be one of full, partial",
            id="bad-mode",
        ),
        pytest.param(
            grant_with(drop="mode"), 2, "missing required key 'mode'", id="missing-mode"
        ),
        pytest.param(
            grant_with(drop="reason"),
            2,
            "missing required key 'reason'",
            id="missing-reason",
        ),
        pytest.param(
            grant_with("reason: ' '", drop="reason"),
            7,
            "'reason' must not be empty",
            id="blank-reason",
        ),
        pytest.param(
            grant_with(drop="actor"),
            2,
            "missing required key 'actor'",
            id="missing-actor",
        ),
        pytest.param(
            GRANT.replace("id: g-1\n    ", "").lstrip(),
            2,
            "missing required key 'id'",
            id="missing-id",
        ),
        pytest.param(
            grant_with("subject: {identity: alice, tier: pro}", drop="subject"),
            7,
            "a subject needs exactly one of identity, api_key_sha256, tier, "
            "domain with descriptor (got identity, tier)",
            id="two-subject-kinds",
        ),
        pytest.param(
            grant_with("subject: {tier: pro, descriptor: [{key: k}]}", drop="subject"),
            7,
            "(got tier, domain with descriptor)",
            id="tier-and-descriptor",
        ),
        pytest.param(
            grant_with("subject: {}", drop="subject"),
            7,
            "(got none)",
            id="no-subject-kind",
        ),
        pytest.param(
            grant_with("subject: {user: alice}", drop="subject"),
            7,
            "unknown key 'user' in subject",
            id="unknown-subject-field",
        ),
        pytest.param(
            grant_with("subject: {api_key_sha256: abc}", drop="subject"),
            7,
            "'api_key_sha256' must be a SHA-256 hex digest",
            id="short-digest",
        ),
        pytest.param(
            grant_with("subject: {domain: api}", drop="subject"),
            7,
            "missing required key 'descriptor'",
            id="domain-without-descriptor",
        ),
        pytest.param(
            grant_with("subject: {domain: api, descriptor: []}", drop="subject"),
            7,
            "'descriptor' must list at least one entry",
            id="empty-descriptor",
        ),
        pytest.param(
            grant_with(
                "subject:",
                "  domain: api",
                "  descriptor:",
                "    - {value: v}",
                drop="subject",
            ),
            10,
            "missing required key 'key'",
            id="entry-without-key",
        ),
        pytest.param(
            grant_with(
                "subject:",
                "  domain: api",
                "  descriptor:",
                "    - {key: k, val: v}",
                drop="subject",
            ),
            10,
            "unknown key 'val' in descriptor entry",
            id="entry-unknown-field",
        ),
        pytest.param(
            "bypass_grants: {id: g-1}\n",
            1,
            "'bypass_grants' must be a list",
            id="grants-not-a-list",
        ),
        pytest.param(
            "bypass_grants: []\nemergency: []\n",
            2,
            "unknown key 'emergency' in bypass file",
            id="unknown-top-level",
        ),
    ],
)
def test_grant_problem_is_reported_at_its_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    """Each invalid grant is one problem at the line of the offending node."""
    path = write(tmp_path, "bypass.yaml", text)

    assert_only_problem(path, line, fragment)


LEVEL = (
    "emergency_levels:\n"
    "  - id: e-1\n"
    "    reason: outage\n"
    "    actor: sre\n"
    "    expires_at: 2026-12-04T10:00:00Z\n"
)


@pytest.mark.parametrize(
    ("extra", "line", "fragment"),
    [
        pytest.param(
            "    percent: 101\n",
            6,
            "'percent' must be between 0 and 100, got 101",
            id="over-100",
        ),
        pytest.param("    percent: -1\n", 6, "between 0 and 100", id="negative"),
        pytest.param("    percent: .nan\n", 6, "'percent' must be a number", id="nan"),
        pytest.param("", 2, "missing required key 'percent'", id="missing"),
        pytest.param(
            "    percent: 5\n    domain: ''\n",
            7,
            "'domain' must not be empty",
            id="empty-domain",
        ),
        pytest.param(
            "    percent: 5\n    mode: full\n",
            7,
            "unknown key 'mode' in emergency level",
            id="unknown-field",
        ),
        pytest.param(
            "    percent: 5\n    starts_at: 2026-12-05T00:00:00Z\n",
            5,
            "must be later",
            id="expiry-before-start",
        ),
    ],
)
def test_emergency_level_problem_is_reported_at_its_line(
    tmp_path: Path, extra: str, line: int, fragment: str
) -> None:
    """Each invalid emergency level is one problem at its line."""
    path = write(tmp_path, "levels.yaml", LEVEL + extra)

    assert_only_problem(path, line, fragment)


def test_missing_expiry_of_a_level(tmp_path: Path) -> None:
    """An emergency level must expire too."""
    path = write(
        tmp_path,
        "levels.yaml",
        "emergency_levels:\n  - {id: e-1, percent: 5, reason: r, actor: a}\n",
    )

    assert_only_problem(path, 2, "missing required key 'expires_at'")


def test_duplicate_ids_across_files_name_both_places(tmp_path: Path) -> None:
    """Grant and level ids share one namespace across every file."""
    first = write(tmp_path, "a.yaml", GRANT)
    second = write(
        tmp_path,
        "b.yaml",
        "emergency_levels:\n"
        "  - {id: e-1, percent: 5, reason: r, actor: a, expires_at: 2027-01-01T00:00:00Z}\n"  # noqa: E501
        "  - {id: g-1, percent: 5, reason: r, actor: a, expires_at: 2027-01-01T00:00:00Z}\n",  # noqa: E501
    )

    found = sorted(str(p) for p in problems(tmp_path))

    assert found == [
        f"{first}:2: bypass id 'g-1' is defined again at {second}:3",
        f"{second}:3: bypass id 'g-1' is already defined at {first}:2",
    ]


def test_every_problem_of_a_grant_is_reported(tmp_path: Path) -> None:
    """One pass finds all problems of a grant, each at its own line."""
    path = write(
        tmp_path,
        "bypass.yaml",
        """
        bypass_grants:
          - id: g-1
            subject: {identity: alice, tier: gold}
            mode: partial
            reason: ""
            actor: ops
            starts_at: 2026-12-03T10:00:00
            expires_at: 2026-12-04T10:00:00Z
            approved_by: ops
        """,
    )

    found = [(p.line, p.message.split(":")[0]) for p in problems(path)]

    assert [line for line, _ in found] == [2, 3, 5, 7, 9]
