"""Bypass grants, overrides and versions of generated/ through a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
import yaml

from admin.stack import AdminStack, status_of
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb

Code = grpc.StatusCode
OK, OVER = 1, 2  # RateLimitResponse codes
BYPASS = "generated/bypass.yaml"
OVERRIDES = "generated/overrides.yaml"


def _later(hours: float) -> datetime:
    now = datetime.now(UTC).replace(microsecond=0)
    return now + timedelta(hours=hours)


def _grant(
    stack: AdminStack, actor: str = "ops@example.com", **fields: object
) -> pb.BypassGrantChange:
    request = pb.GrantBypassRequest(**fields)  # type: ignore[arg-type]
    if not request.HasField("expires_at"):
        request.expires_at.FromDatetime(_later(1))
    return stack.call("GrantBypass", request, pb.BypassGrantChange, actor=actor)


def _entry(stack: AdminStack, file: str, grant_id: str) -> str | None:
    """The YAML lines of one grant in ``file``, as written."""
    text = (stack.config / file).read_text()
    blocks = text.split("\n  - ")
    for block in blocks[1:]:
        if block.startswith(f"id: {grant_id}\n"):
            return "  - " + block.rstrip("\n") + "\n"
    return None


def test_grant_approve_revoke_round_trip_writes_the_documented_yaml(
    stack: AdminStack,
) -> None:
    """Request (needs approval), approve by a second actor, revoke."""
    starts, expires = _later(0), _later(24)
    request = pb.GrantBypassRequest(
        id="g-2026-901",
        subject=pb.Subject(identity="carol"),
        mode=pb.BYPASS_MODE_PARTIAL,
        factor=3,
        reason="incident 42",
        requires_approval=True,
    )
    request.starts_at.FromDatetime(starts)
    request.expires_at.FromDatetime(expires)

    granted = stack.call(
        "GrantBypass", request, pb.BypassGrantChange, actor="ops@example.com"
    )

    assert granted.in_force
    assert granted.grant.state == pb.GRANT_STATE_PENDING_APPROVAL
    z = "%Y-%m-%dT%H:%M:%SZ"
    assert _entry(stack, BYPASS, "g-2026-901") == (
        "  - id: g-2026-901\n"
        "    subject: {identity: carol}\n"
        "    mode: partial\n"
        "    factor: 3\n"
        '    reason: "incident 42"\n'
        "    actor: ops@example.com\n"
        f"    starts_at: {starts.strftime(z)}\n"
        f"    expires_at: {expires.strftime(z)}\n"
        "    requires_approval: true\n"
        "    approved_by: null\n"
    )

    approve = pb.ApproveBypassRequest(id="g-2026-901")
    same_actor = status_of(
        lambda: stack.call(
            "ApproveBypass", approve, pb.BypassGrantChange, actor="OPS@example.com"
        )
    )
    approved = stack.call(
        "ApproveBypass", approve, pb.BypassGrantChange, actor="lead@example.com"
    )

    assert same_actor is Code.FAILED_PRECONDITION
    assert approved.grant.state == pb.GRANT_STATE_ACTIVE
    assert "    approved_by: lead@example.com\n" in (
        _entry(stack, BYPASS, "g-2026-901") or ""
    )

    revoked = stack.call(
        "RevokeBypass", pb.RevokeBypassRequest(id="g-2026-901"), pb.BypassGrantChange
    )
    listed = stack.call(
        "ListBypassGrants", pb.ListBypassGrantsRequest(), pb.ListBypassGrantsResponse
    )

    assert revoked.grant.id == "g-2026-901"
    assert _entry(stack, BYPASS, "g-2026-901") is None
    assert "g-2026-901" not in [g.id for g in listed.grants]
    document = yaml.safe_load((stack.config / BYPASS).read_text())
    assert isinstance(document["bypass_grants"], list)


def test_a_full_grant_lets_an_over_limit_identity_through(stack: AdminStack) -> None:
    """The written grant reaches the engine through the reload path."""
    for _ in range(3):
        assert stack.hit(("user_id", "dave")).overall_code == OK
    assert stack.hit(("user_id", "dave")).overall_code == OVER

    granted = _grant(
        stack,
        subject=pb.Subject(identity="dave"),
        mode=pb.BYPASS_MODE_FULL,
        reason="customer escalation",
    )

    assert granted.in_force
    assert granted.grant.id.startswith("g-")
    assert stack.hit(("user_id", "dave")).overall_code == OK


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"mode": pb.BYPASS_MODE_FULL, "reason": "x"}, Code.INVALID_ARGUMENT),
        (
            {
                "subject": pb.Subject(identity="x"),
                "mode": pb.BYPASS_MODE_PARTIAL,
                "reason": "x",
            },
            Code.INVALID_ARGUMENT,
        ),
        (
            {
                "subject": pb.Subject(identity="x"),
                "mode": pb.BYPASS_MODE_FULL,
                "reason": "",
            },
            Code.INVALID_ARGUMENT,
        ),
        (
            {"subject": pb.Subject(tier="pro"), "reason": "no mode"},
            Code.INVALID_ARGUMENT,
        ),
        (
            {"subject": pb.Subject(api_key_sha256="abc"), "mode": 1, "reason": "x"},
            Code.INVALID_ARGUMENT,
        ),
    ],
)
def test_malformed_grants_are_refused(
    stack: AdminStack, fields: dict[str, object], code: Code
) -> None:
    """Each missing or wrong field: one precise status, nothing written."""
    before = stack.policy().digest

    assert status_of(lambda: _grant(stack, **fields)) is code
    assert stack.policy().digest == before


def test_expired_duplicate_and_unknown_grants_are_refused(stack: AdminStack) -> None:
    """A grant must expire in the future; ids are unique; revoke needs one."""
    past = pb.GrantBypassRequest(
        subject=pb.Subject(identity="x"), mode=pb.BYPASS_MODE_FULL, reason="x"
    )
    past.expires_at.FromDatetime(_later(-1))
    base = {"subject": pb.Subject(identity="frank"), "mode": 1, "reason": "x"}
    _grant(stack, id="g-2026-950", **base)

    expired = status_of(lambda: stack.call("GrantBypass", past, pb.BypassGrantChange))
    duplicate = status_of(lambda: _grant(stack, id="g-2026-950", **base))
    unknown = status_of(
        lambda: stack.call(
            "RevokeBypass", pb.RevokeBypassRequest(id="g-nope"), pb.BypassGrantChange
        )
    )

    assert (expired, duplicate, unknown) == (
        Code.INVALID_ARGUMENT,
        Code.FAILED_PRECONDITION,
        Code.NOT_FOUND,
    )


def test_override_is_a_partial_grant_in_its_own_file(stack: AdminStack) -> None:
    """SetOverride twice replaces; the limit seen by usage follows the factor."""
    subject = pb.Subject(identity="erin")
    usage = pb.GetUsageRequest(
        domain="api", entries=[pb.Entry(key="user_id", value="erin")]
    )

    def set_factor(factor: float) -> pb.BypassGrantChange:
        request = pb.SetOverrideRequest(
            subject=subject, factor=factor, reason="load test"
        )
        request.expires_at.FromDatetime(_later(2))
        return stack.call("SetOverride", request, pb.BypassGrantChange)

    first = set_factor(2)
    limit_doubled = stack.call("GetUsage", usage, pb.GetUsageResponse).limit
    second = set_factor(0.5)
    listed = stack.call(
        "ListBypassGrants", pb.ListBypassGrantsRequest(), pb.ListBypassGrantsResponse
    )

    assert first.grant.id == second.grant.id
    assert first.grant.id.startswith("ov-")
    assert limit_doubled.requests_per_unit == 6
    assert [o.factor for o in listed.overrides if o.id == first.grant.id] == [0.5]
    entry = _entry(stack, OVERRIDES, first.grant.id) or ""
    assert (
        "    subject: {identity: erin}\n    mode: partial\n    factor: 0.5\n" in entry
    )

    cleared = stack.call(
        "ClearOverride", pb.ClearOverrideRequest(subject=subject), pb.BypassGrantChange
    )

    assert cleared.grant.id == first.grant.id
    assert _entry(stack, OVERRIDES, first.grant.id) is None
    usage_after = stack.call("GetUsage", usage, pb.GetUsageResponse)
    assert usage_after.limit.requests_per_unit == 3


def test_versions_and_rollback_of_generated(stack: AdminStack) -> None:
    """Every change to generated/ is a version; rollback steps back, twice."""
    base = {"subject": pb.Subject(identity="gina"), "mode": 1, "reason": "x"}
    _grant(stack, id="g-2026-970", **base)
    _grant(stack, id="g-2026-971", **base)
    with_both = (stack.config / BYPASS).read_text()

    first = stack.call("Rollback", pb.RollbackRequest(), pb.RollbackResponse)
    after_first = (stack.config / BYPASS).read_text()
    second = stack.call("Rollback", pb.RollbackRequest(), pb.RollbackResponse)
    versions = stack.call(
        "ListVersions", pb.ListVersionsRequest(), pb.ListVersionsResponse
    ).versions

    assert "g-2026-971" in with_both
    assert "g-2026-970" in after_first and "g-2026-971" not in after_first
    assert "g-2026-970" not in (stack.config / BYPASS).read_text()
    assert first.in_force and second.in_force
    assert second.version.restored == first.version.restored - 1
    assert [v.number for v in versions] == sorted(v.number for v in versions)
    assert versions[-1].action.startswith("rollback to ")
