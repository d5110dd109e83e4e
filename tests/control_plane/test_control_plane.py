"""The control plane as a process: shared-directory and push publishing,
rollback (admin call and offline subcommand), sweeping expired grants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from admin.stack import AdminStack, eventually, start_stack, status_of, write_config
from control_plane.process import ControlPlaneProcess
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.client import AdminClient
from ratelimit_ext.cli import main

BYPASS = Path("generated") / "bypass.yaml"
OK, OVER = 1, 2  # RateLimitResponse codes


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AdminStack]:
    running = start_stack(tmp_path / "server")
    try:
        yield running
    finally:
        running.server.stop()


def _grant(
    client: AdminClient, identity: str, *, seconds: float = 3600
) -> pb.BypassGrantChange:
    request = pb.GrantBypassRequest(
        subject=pb.Subject(identity=identity),
        mode=pb.BYPASS_MODE_FULL,
        reason=f"control plane test {identity}",
    )
    request.expires_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return client.call("GrantBypass", request, pb.BypassGrantChange)


def _over_limit(server: AdminStack, identity: str) -> None:
    for _ in range(3):
        server.hit(("user_id", identity))
    assert server.hit(("user_id", identity)).overall_code == OVER


def test_shared_directory_publish_and_rollback(
    server: AdminStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Grants written by the control plane into the watched directory are
    served; rolling back (admin call, then the offline subcommand) too."""
    _over_limit(server, "olga")
    process = ControlPlaneProcess(server.config, tmp_path, server.token_file)
    with process as cp, cp.client() as client:
        info = client.call(
            "GetServerInfo", pb.GetServerInfoRequest(), pb.GetServerInfoResponse
        )
        granted = _grant(client, "olga")
        _grant(client, "pete")
        no_counters = status_of(
            lambda: client.call(
                "GetUsage",
                pb.GetUsageRequest(domain="api", identity="olga"),
                pb.GetUsageResponse,
            )
        )

        assert info.role == "control-plane"
        assert not granted.in_force  # the control plane serves no policy
        assert no_counters is grpc.StatusCode.UNIMPLEMENTED
        eventually(lambda: server.hit(("user_id", "olga")).overall_code == OK)

        rolled = client.call("Rollback", pb.RollbackRequest(), pb.RollbackResponse)
        assert "pete" not in (server.config / BYPASS).read_text()
        assert rolled.version.action == f"rollback to {rolled.version.restored}"

    # Offline, while the control plane is stopped: the subcommands.
    config = str(server.config)
    assert main(["control-plane", "rollback", "--config-dir", config]) == 0
    assert not (server.config / BYPASS).exists()  # version 1: no grants yet
    eventually(lambda: server.hit(("user_id", "olga")).overall_code == OVER)

    capsys.readouterr()
    assert main(["control-plane", "history", "--config-dir", config, "--json"]) == 0
    actions = [v["action"] for v in json.loads(capsys.readouterr().out)]
    assert actions[0] == "initial"
    assert actions[-2:] == ["rollback to 2", "rollback to 1"]


def test_push_mode_publishes_through_apply_policy(
    server: AdminStack, tmp_path: Path
) -> None:
    """With --publish-to, generated/ is pushed to the server, and a rollback
    is pushed too."""
    own = write_config(tmp_path / "cp-config")
    extra = [
        "--publish-to", server.admin_address,
        "--publish-token-file", str(server.token_file),
        "--sync-interval", "0.5",
    ]  # fmt: skip
    _over_limit(server, "quinn")
    process = ControlPlaneProcess(own, tmp_path, server.token_file, extra_args=extra)
    with process as cp, cp.client() as client:
        _grant(client, "quinn")

        def pushed() -> bool:
            theirs, mine = server.config / BYPASS, own / BYPASS
            if not mine.exists():
                return not theirs.exists()
            return theirs.exists() and theirs.read_text() == mine.read_text()

        eventually(pushed, timeout=2.0)
        eventually(lambda: server.hit(("user_id", "quinn")).overall_code == OK)

        client.call("Rollback", pb.RollbackRequest(), pb.RollbackResponse)
        assert not (own / BYPASS).exists()  # back to version 1: no grants
        eventually(pushed, timeout=2.0)
        eventually(lambda: server.hit(("user_id", "quinn")).overall_code == OVER)

    audit = server.audit_file.read_text()
    assert '"actor": "control-plane"' in audit
    assert '"method": "ApplyPolicy"' in audit


def test_expired_grants_are_swept(tmp_path: Path) -> None:
    """A grant that expired is removed from the file as a new version."""
    config = write_config(tmp_path / "config")
    token = tmp_path / "token"
    token.write_text("cp-token")
    extra = ["--sweep-interval", "0.3"]
    process = ControlPlaneProcess(config, tmp_path, token, extra_args=extra)
    with process as cp, cp.client() as client:
        _grant(client, "long")
        _grant(client, "short", seconds=1.5)
        assert "short" in (config / BYPASS).read_text()

        eventually(lambda: "short" not in (config / BYPASS).read_text(), 3.0)

        def latest() -> pb.Version:
            return client.call(
                "ListVersions", pb.ListVersionsRequest(), pb.ListVersionsResponse
            ).versions[-1]

        # The file is renamed into place before its version is recorded.
        eventually(lambda: latest().action == "sweep expired", 3.0)
        versions = [latest()]

    assert "long" in (config / BYPASS).read_text()
    assert versions[-1].action == "sweep expired"
    assert versions[-1].actor == "control-plane"


def test_control_plane_refuses_an_invalid_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Writes are validated against the directory, so it must load at start."""
    config = write_config(tmp_path / "config")
    (config / "broken.yaml").write_text("domain: broken\ndescriptors: 7\n")

    status = main(["control-plane", "--config-dir", str(config), "--listen", "none"])

    assert status == 1
    assert "broken.yaml:2:" in capsys.readouterr().err


def test_offline_rollback_without_history_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to roll back to: exit 1 with a reason, and the refusal audited."""
    config = write_config(tmp_path / "config")

    status = main(["control-plane", "rollback", "--config-dir", str(config)])

    assert status == 1
    assert "nothing to roll back" in capsys.readouterr().err
    record = json.loads((tmp_path / "audit.jsonl").read_text())
    assert (record["method"], record["outcome"]) == ("Rollback", "FAILED_PRECONDITION")
