"""Who may call the admin API: the bearer token, its rotation, the loopback rule."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from admin.stack import TOKEN, AdminStack, make_certificates, start_stack, status_of
from harness.ports import free_port
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.client import AdminClient, ClientTls
from ratelimit_ext.cli import main

Code = grpc.StatusCode


def _grant_request() -> pb.GrantBypassRequest:
    request = pb.GrantBypassRequest(
        subject=pb.Subject(identity="mallory"),
        mode=pb.BYPASS_MODE_FULL,
        reason="let me in",
    )
    request.expires_at.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    return request


def _audit_lines(stack: AdminStack) -> int:
    if not stack.audit_file.exists():
        return 0
    return len(stack.audit_file.read_text().splitlines())


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", ""])
def test_missing_or_wrong_token_is_unauthenticated_and_changes_nothing(
    stack: AdminStack, token: str | None
) -> None:
    """Every call without the right token is refused before anything happens."""
    files_before = sorted(p.name for p in stack.config.rglob("*"))
    policy_before = stack.policy().digest
    audited_before = _audit_lines(stack)

    def grant() -> object:
        return stack.call(
            "GrantBypass", _grant_request(), pb.BypassGrantChange, token=token
        )

    def info() -> object:
        return stack.call(
            "GetServerInfo",
            pb.GetServerInfoRequest(),
            pb.GetServerInfoResponse,
            token=token,
        )

    assert status_of(grant) is Code.UNAUTHENTICATED
    assert status_of(info) is Code.UNAUTHENTICATED
    assert sorted(p.name for p in stack.config.rglob("*")) == files_before
    assert stack.policy().digest == policy_before
    assert _audit_lines(stack) == audited_before
    log = stack.server.log_text()
    assert "GrantBypass" in log
    assert "refused: " + ("no bearer token" if not token else "wrong token") in log
    assert TOKEN not in log
    if token:
        assert token not in log


def test_rotated_token_file_is_read_again(stack: AdminStack) -> None:
    """A new token in the file works at once; the old one stops working."""

    def info(token: str) -> grpc.StatusCode:
        return status_of(
            lambda: stack.call(
                "GetServerInfo",
                pb.GetServerInfoRequest(),
                pb.GetServerInfoResponse,
                token=token,
            )
        )

    assert info(TOKEN) is Code.OK
    try:
        stack.token_file.write_text("rotated-token-2\n")
        assert info("rotated-token-2") is Code.OK
        assert info(TOKEN) is Code.UNAUTHENTICATED
    finally:
        stack.token_file.write_text(TOKEN)
    assert info(TOKEN) is Code.OK


def test_non_loopback_admin_port_without_token_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No token file: the admin port must be on loopback, or serve exits 2."""
    (tmp_path / "policy.yaml").write_text("domain: api\ndescriptors: []\n")
    args = ["serve", "--config", str(tmp_path), "--metrics-listen", "none"]
    args += ["--listen", f"127.0.0.1:{free_port()}"]

    status = main([*args, "--admin-listen", f"0.0.0.0:{free_port()}"])

    assert status == 2
    assert "--admin-token-file" in capsys.readouterr().err


def test_admin_port_must_differ_from_the_data_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The admin API never shares the data port."""
    (tmp_path / "policy.yaml").write_text("domain: api\ndescriptors: []\n")
    listen = f"127.0.0.1:{free_port()}"
    args = ["serve", "--config", str(tmp_path), "--metrics-listen", "none"]

    status = main([*args, "--listen", listen, "--admin-listen", listen])

    assert status == 2
    assert "--admin-listen must differ from --listen" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_mtls_requires_a_client_certificate_and_audits_its_name(
    tmp_path: Path,
) -> None:
    """With a client CA, only clients with a certificate get in (no token)."""
    certs = make_certificates(tmp_path / "certs")
    tls = [
        "--admin-tls-cert", str(certs["server.pem"]),
        "--admin-tls-key", str(certs["server.key"]),
        "--admin-tls-client-ca", str(certs["ca.pem"]),
    ]  # fmt: skip
    running = start_stack(tmp_path, *tls, token=False)
    try:
        with_cert = ClientTls(certs["ca.pem"], certs["client.pem"], certs["client.key"])
        without_cert = ClientTls(certs["ca.pem"])
        reset = pb.ResetCountersRequest(
            domain="api", entries=[pb.Entry(key="user_id", value="x")]
        )

        with AdminClient(running.admin_address, tls=with_cert, timeout=5) as client:
            client.call("ResetCounters", reset, pb.ResetCountersResponse)
        with AdminClient(running.admin_address, tls=without_cert, timeout=5) as client:
            refused = status_of(
                lambda: client.call(
                    "GetServerInfo", pb.GetServerInfoRequest(), pb.GetServerInfoResponse
                )
            )

        assert refused is Code.UNAVAILABLE
        record = json.loads(running.audit_file.read_text().splitlines()[-1])
        assert (record["actor"], record["principal"]) == ("ops-client", "ops-client")
    finally:
        running.server.stop()
