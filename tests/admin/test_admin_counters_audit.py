"""Usage, counter resets, the audit trail and the admin CLI, on a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from admin.stack import TOKEN, AdminStack, status_of
from harness.server import SRC_DIR
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.cli import main

Code = grpc.StatusCode
OK, OVER = 1, 2  # RateLimitResponse codes


def _usage(stack: AdminStack, user: str) -> pb.GetUsageResponse:
    request = pb.GetUsageRequest(
        domain="api", entries=[pb.Entry(key="user_id", value=user)]
    )
    return stack.call("GetUsage", request, pb.GetUsageResponse)


def test_usage_counts_nothing_and_follows_the_hits(stack: AdminStack) -> None:
    """A check-only decision: asking twice leaves the counter as it was."""
    fresh = _usage(stack, "hank")
    again = _usage(stack, "hank")
    stack.hit(("user_id", "hank"))
    stack.hit(("user_id", "hank"))
    used = _usage(stack, "hank")
    stack.hit(("user_id", "hank"))

    assert (fresh.code, fresh.remaining, fresh.limited) == ("OK", 3, True)
    assert again.remaining == 3
    assert (fresh.limit.requests_per_unit, fresh.limit.unit) == (3, "minute")
    assert used.remaining == 1
    assert _usage(stack, "hank").code == "OVER_LIMIT"


def test_usage_where_no_limit_applies(stack: AdminStack) -> None:
    """Unknown domains and unmatched descriptors are 'not limited'."""
    unknown = pb.GetUsageRequest(domain="nope", entries=[pb.Entry(key="a", value="b")])
    unmatched = pb.GetUsageRequest(domain="api", entries=[pb.Entry(key="a", value="b")])

    for request in (unknown, unmatched):
        usage = stack.call("GetUsage", request, pb.GetUsageResponse)
        assert (usage.code, usage.limited) == ("OK", False)
    empty = pb.GetUsageRequest(domain="api")
    assert (
        status_of(lambda: stack.call("GetUsage", empty, pb.GetUsageResponse))
        is Code.INVALID_ARGUMENT
    )


def test_reset_counters_gives_the_quota_back(stack: AdminStack) -> None:
    """Over the limit, reset, admitted again (no stale over-limit cache)."""
    for _ in range(4):
        stack.hit(("user_id", "ivan"))
    assert stack.hit(("user_id", "ivan")).overall_code == OVER

    request = pb.ResetCountersRequest(
        domain="api", entries=[pb.Entry(key="user_id", value="ivan")]
    )
    reset = stack.call("ResetCounters", request, pb.ResetCountersResponse)

    assert (reset.subjects, reset.removed) == (1, 1)
    assert stack.hit(("user_id", "ivan")).overall_code == OK
    assert _usage(stack, "ivan").remaining == 2


def test_reset_of_an_unknown_domain_is_not_found(stack: AdminStack) -> None:
    request = pb.ResetCountersRequest(
        domain="nope", entries=[pb.Entry(key="user_id", value="x")]
    )

    status = status_of(
        lambda: stack.call("ResetCounters", request, pb.ResetCountersResponse)
    )

    assert status is Code.NOT_FOUND


def test_audit_lists_mutating_calls_without_secrets(stack: AdminStack) -> None:
    """Who, what, when, before/after; refused changes too; never the token."""
    request = pb.SetOverrideRequest(
        subject=pb.Subject(identity="judy"), factor=2, reason="audit me"
    )
    request.expires_at.GetCurrentTime()
    request.expires_at.seconds += 3600
    stack.call("SetOverride", request, pb.BypassGrantChange, actor="auditor@x")
    refused = pb.ApproveBypassRequest(id="g-missing")
    status_of(
        lambda: stack.call(
            "ApproveBypass", refused, pb.BypassGrantChange, actor="auditor@x"
        )
    )
    stack.call("GetPolicy", pb.GetPolicyRequest(), pb.GetPolicyResponse)

    records = stack.call(
        "ListAudit", pb.ListAuditRequest(limit=50), pb.ListAuditResponse
    ).records

    mine = [r for r in records if r.actor == "auditor@x"]
    assert [(r.method, r.outcome) for r in mine] == [
        ("SetOverride", "ok"),
        ("ApproveBypass", "NOT_FOUND"),
    ]
    override = mine[0]
    assert override.target == "generated/overrides.yaml"
    assert json.loads(override.before) is None
    assert json.loads(override.after)["subject"] == {"identity": "judy"}
    assert override.peer.startswith("ipv4:127.0.0.1")
    assert override.time.seconds > 0
    assert "GetPolicy" not in {r.method for r in records}
    assert TOKEN not in stack.audit_file.read_text()
    assert TOKEN not in stack.server.log_text()


def test_cli_json_output_parses(
    stack: AdminStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every reply printed with --json is one JSON document."""
    common = ["admin", "--server", stack.admin_address]
    common += ["--token-file", str(stack.token_file), "--actor", "cli@x"]
    commands = [
        ["info"],
        ["policy"],
        [
            "grant",
            "--identity",
            "kate",
            "--factor",
            "2",
            "--for",
            "1h",
            "--reason",
            "x",
        ],
        ["grants"],
        ["usage", "--domain", "api", "--entry", "user_id=kate"],
        ["reset", "--domain", "api", "--entry", "user_id=kate"],
        ["versions"],
        ["audit", "--limit", "5"],
    ]
    replies = []
    for command in commands:
        assert main([*common, "--json", *command]) == 0, command
        replies.append(json.loads(capsys.readouterr().out))

    assert replies[0]["role"] == "server"
    assert replies[2]["grant"]["subject"] == {"identity": "kate"}
    assert "kate" in [g["subject"].get("identity") for g in replies[3]["grants"]]
    assert replies[4]["limit"]["requests_per_unit"] == 6
    assert replies[7]["records"][-1]["actor"] == "cli@x"


def test_cli_refusal_and_human_output(
    stack: AdminStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused call exits 1 with its status; default output is for people."""
    address = ["admin", "--server", stack.admin_address]

    assert main([*address, "info"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main([*address, "--token-file", str(stack.token_file), "info"]) == 0
    assert "store memory: healthy" in capsys.readouterr().out


def test_cli_entry_point_runs_as_a_process(stack: AdminStack) -> None:
    """``ratelimit-ext admin`` as a real process, token from the environment."""
    env = dict(
        os.environ,
        PYTHONPATH=str(SRC_DIR),
        RATELIMIT_EXT_ADMIN_SERVER=stack.admin_address,
        RATELIMIT_EXT_ADMIN_TOKEN_FILE=str(stack.token_file),
    )
    result = subprocess.run(
        [sys.executable, "-m", "ratelimit_ext", "admin", "info", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["store_healthy"] is True
