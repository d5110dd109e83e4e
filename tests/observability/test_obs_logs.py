"""``--log-format json``: one JSON object a line, with the request's context
and without secrets."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from harness.ports import LOOPBACK, free_port
from harness.server import ServerProcess
from harness.valkey import ValkeyServer
from observability.support import API_KEY, CHECK_DOMAIN, DOMAIN, write_policy
from ratelimit_ext.cli import main
from ratelimit_ext.logs import JsonFormatter, bind_request

REDIS_PASSWORD = "redis-pass-4f0c1e"
ADMIN_TOKEN = "admin-token-b27d55"


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` as JSON; raises if one is not."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """JSON logs; a Redis that is not there (with a password); an admin token."""
    token = tmp_path / "admin-token"
    token.write_text(ADMIN_TOKEN)
    store = f"redis://:{REDIS_PASSWORD}@{LOOPBACK}:{free_port()}/0"
    process = ServerProcess(
        write_policy(tmp_path / "config"),
        tmp_path,
        store=store,
        extra_args=(
            "--log-format",
            "json",
            "--failure-policy",
            "allow",
            "--admin-listen",
            f"{LOOPBACK}:{free_port()}",
            "--admin-token-file",
            str(token),
            "--store-timeout",
            "1",
        ),
    )
    with process:
        yield process


def test_json_lines_carry_context_and_no_secrets(server: ServerProcess) -> None:
    with server.channel() as channel:
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="generic_key", value="v1")
        rls.ShouldRateLimit(
            rls_pb2.RateLimitRequest(
                domain=DOMAIN,
                descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])],
            ),
            timeout=5,
        )
        check = external_auth_pb2.CheckRequest()
        check.attributes.request.http.headers["x-api-key"] = API_KEY
        check.attributes.context_extensions["ratelimit_domain"] = CHECK_DOMAIN
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, timeout=5)
    server.stop()

    text = server.log_path.read_text()
    lines = json_lines(text)

    assert lines, text
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys()
        assert str(line["timestamp"]).endswith("Z")
    failed = [
        line
        for line in lines
        if "failed" in str(line["message"])
        and line["logger"] == "ratelimit_ext.store.health"
    ]
    assert failed, text
    assert failed[0]["domain"] == DOMAIN
    assert len(str(failed[0]["policy_version"])) == 12
    serving = [line for line in lines if str(line["message"]).startswith("serving")]
    assert serving and "domain" not in serving[0]
    warming = [line for line in lines if "not ready at start" in str(line["message"])]
    assert warming and warming[0]["level"] == "WARNING"
    for secret in (REDIS_PASSWORD, ADMIN_TOKEN, API_KEY):
        assert secret not in text


def test_formatter_adds_the_bound_request_and_exceptions() -> None:
    formatter = JsonFormatter({"worker": 2}, trace_ids=lambda: ("ab" * 16, "cd" * 8))
    record = logging.LogRecord("x.y", logging.ERROR, __file__, 1, "m %s", ("a",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()

    bind_request("api", "0123456789abcdef")
    line = json.loads(formatter.format(record))

    assert line["message"] == "m a"
    assert line["level"] == "ERROR" and line["logger"] == "x.y"
    assert line["worker"] == 2
    assert (line["domain"], line["policy_version"]) == ("api", "0123456789ab")
    assert (line["trace_id"], line["span_id"]) == ("ab" * 16, "cd" * 8)
    assert "ValueError: boom" in line["exception"]
    assert time.time() - 60 < _seconds(line["timestamp"]) <= time.time() + 1


def _seconds(stamp: object) -> float:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def test_serve_refuses_an_unknown_log_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_policy(tmp_path / "config")
    code = main(["serve", "--config", str(config), "--log-format", "xml"])

    assert code == 2
    assert "--log-format must be one of text, json" in capsys.readouterr().err


def test_log_format_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATELIMIT_EXT_LOG_FORMAT", "yaml")
    code = main(["serve", "--config", str(write_policy(tmp_path / "c"))])

    assert code == 2


@pytest.mark.redis
def test_workers_log_json_with_their_index(
    tmp_path: Path, valkey: ValkeyServer
) -> None:
    """``--workers 2``: the supervisor's and both workers' lines are JSON."""
    process = ServerProcess(
        write_policy(tmp_path / "config"),
        tmp_path,
        store=valkey.url,
        extra_args=("--workers", "2", "--log-format", "json"),
    )
    with process:
        pass

    lines = json_lines(process.log_path.read_text())

    serving = [line for line in lines if str(line["message"]).startswith("serving")]
    assert sorted(line["worker"] for line in serving) == [0, 1]  # type: ignore[type-var]
    assert all(isinstance(line["pid"], int) for line in serving)
