"""GetServerInfo, GetPolicy, ValidatePolicy and ApplyPolicy against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from admin.stack import AdminStack, dedent, eventually, start_stack, status_of
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb

Code = grpc.StatusCode
OVER = 2  # RateLimitResponse.OVER_LIMIT

SEARCH = dedent(
    """
    domain: search
    descriptors:
      - key: q
        rate_limit: {unit: minute, requests_per_unit: 1}
    """
)
BROKEN = dedent(
    """
    domain: broken
    descriptors:
      - key: q
        rate_limit: {unit: fortnight, requests_per_unit: 1}
    """
)


def _apply(stack: AdminStack, **fields: object) -> pb.ApplyPolicyResponse:
    request = pb.ApplyPolicyRequest(**fields)  # type: ignore[arg-type]
    return stack.call("ApplyPolicy", request, pb.ApplyPolicyResponse)


def _validate(stack: AdminStack, **fields: object) -> pb.ValidatePolicyResponse:
    request = pb.ValidatePolicyRequest(**fields)  # type: ignore[arg-type]
    return stack.call("ValidatePolicy", request, pb.ValidatePolicyResponse)


def test_server_info_reports_version_store_and_reloader(stack: AdminStack) -> None:
    """Health detail: version, role, store health, reloader status."""
    info = stack.call(
        "GetServerInfo", pb.GetServerInfoRequest(), pb.GetServerInfoResponse
    )

    assert info.version
    assert info.role == "server"
    assert info.store == "memory"
    assert info.store_healthy
    assert info.reloader.watching
    assert info.reloader.digest == stack.policy().digest
    assert not info.reloader.rejected_digest


def test_get_policy_lists_files_and_domains(stack: AdminStack) -> None:
    """The active policy: digest, source files, loaded-at, domains."""
    policy = stack.policy()

    assert len(policy.digest) == 64
    assert "api" in policy.domains
    assert any(f.endswith("policy.yaml") for f in policy.files)
    assert policy.api_keys == 1
    assert policy.loaded_at.seconds > 0


def test_validate_reports_file_line_problems_and_applies_nothing(
    stack: AdminStack,
) -> None:
    """Problems come back as file:line: message; no file is written."""
    before = stack.policy().digest

    result = _validate(stack, files=[pb.PolicyFile(name="broken.yaml", content=BROKEN)])

    assert not result.valid
    assert [(p.file, p.line) for p in result.problems] == [("broken.yaml", 4)]
    assert "fortnight" in result.problems[0].message
    assert not (stack.config / "broken.yaml").exists()
    assert stack.policy().digest == before


def test_validate_checks_against_the_directory_unless_standalone(
    stack: AdminStack,
) -> None:
    """A second 'api' domain clashes with the directory's, not on its own."""
    clash = pb.PolicyFile(name="other.yaml", content="domain: api\ndescriptors: []\n")

    merged = _validate(stack, files=[clash])
    alone = _validate(stack, files=[clash], standalone=True)

    assert not merged.valid
    assert any("domain 'api'" in p.message for p in merged.problems)
    assert alone.valid


def test_apply_writes_atomically_and_is_served_within_two_seconds(
    stack: AdminStack,
) -> None:
    """A new domain file is in force when the reply comes (and well within 2 s)."""
    before = stack.policy().digest

    reply = _apply(
        stack, files=[pb.PolicyFile(name="teams/search.yaml", content=SEARCH)]
    )

    assert reply.previous_digest == before
    assert reply.in_force
    assert (stack.config / "teams" / "search.yaml").read_text() == SEARCH
    assert not [p for p in stack.config.rglob("*.tmp")]
    eventually(lambda: stack.policy().digest == reply.digest)
    assert stack.hit(("q", "x"), domain="search").overall_code != OVER
    assert stack.hit(("q", "x"), domain="search").overall_code == OVER


def test_apply_of_an_invalid_set_changes_nothing(stack: AdminStack) -> None:
    """INVALID_ARGUMENT with file:line; the directory and policy stay."""
    before = stack.policy().digest

    with pytest.raises(grpc.RpcError) as refused:
        _apply(stack, files=[pb.PolicyFile(name="broken.yaml", content=BROKEN)])

    assert refused.value.code() is Code.INVALID_ARGUMENT
    assert "broken.yaml:4:" in refused.value.details()
    assert not (stack.config / "broken.yaml").exists()
    assert stack.policy().digest == before


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../outside.yaml", Code.INVALID_ARGUMENT),
        (".hidden.yaml", Code.INVALID_ARGUMENT),
        ("notes.txt", Code.INVALID_ARGUMENT),
        ("/etc/x.yaml", Code.INVALID_ARGUMENT),
    ],
)
def test_apply_refuses_names_outside_what_the_loader_reads(
    stack: AdminStack, name: str, code: Code
) -> None:
    """Only visible *.yaml/*.yml names inside the directory."""
    file = pb.PolicyFile(name=name, content=SEARCH)

    assert status_of(lambda: _apply(stack, files=[file])) is code


def test_apply_with_a_stale_expected_digest_is_aborted(stack: AdminStack) -> None:
    """Optimistic concurrency: the files changed since the caller looked."""
    file = pb.PolicyFile(name="late.yaml", content=SEARCH.replace("search", "late"))

    status = status_of(lambda: _apply(stack, files=[file], expected_digest="0" * 64))

    assert status is Code.ABORTED
    assert not (stack.config / "late.yaml").exists()


def test_apply_can_delete_a_file(stack: AdminStack) -> None:
    """A removed domain file takes its domain out of the policy."""
    extra = pb.PolicyFile(name="gone.yaml", content=SEARCH.replace("search", "gone"))
    _apply(stack, files=[extra])
    assert "gone" in stack.policy().domains

    reply = _apply(stack, delete=["gone.yaml"])

    assert reply.in_force
    assert not (stack.config / "gone.yaml").exists()
    assert "gone" not in stack.policy().domains


def test_admin_writes_beside_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes layout: files are symlinks through ..data; both kinds of
    change (an admin write into generated/, a ..data swap) are served."""
    config = tmp_path / "config"
    first = config / "..2026_12_01_00_00_00.1"
    first.mkdir(parents=True)
    (first / "policy.yaml").write_text(
        dedent(
            """
            domain: api
            descriptors:
              - key: user_id
                rate_limit: {unit: minute, requests_per_unit: 3}
            """
        )
    )
    os.symlink(first.name, config / "..data")
    os.symlink("..data/policy.yaml", config / "policy.yaml")
    stack = start_stack(tmp_path, token=True, reuse_config=True)
    try:
        added = _apply(stack, files=[pb.PolicyFile(name="search.yaml", content=SEARCH)])
        assert added.in_force

        second = config / "..2026_12_02_00_00_00.2"
        second.mkdir()
        (second / "policy.yaml").write_text(
            (first / "policy.yaml").read_text().replace(": 3}", ": 1}")
        )
        os.symlink(second.name, config / "..data_tmp")
        os.rename(config / "..data_tmp", config / "..data")

        def swapped() -> bool:
            response = stack.hit(("user_id", "k8s"), hits=1)
            return response.statuses[0].current_limit.requests_per_unit == 1

        eventually(swapped, timeout=2.0)
        assert "search" in stack.policy().domains
        assert (config / "search.yaml").is_file()
    finally:
        stack.server.stop()
