"""The command line, run as a user would: real processes, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.ports import free_port
from harness.server import ServerProcess
from ratelimit_ext.policy.keys import hash_key

ROOT = Path(__file__).resolve().parents[1]


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratelimit_ext", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_config_accepts_the_example_config() -> None:
    result = run("check-config", str(ROOT / "config"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 2 files, 1 domains, 3 API keys")


def test_check_config_lists_every_problem_as_file_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "domain: d\n"
        "descriptors:\n"
        "  - key: k\n"
        "    rate_limit: {unit: fortnight, requests_per_unit: 1}\n"
        "  - key: ''\n"
        "    colour: blue\n"
    )
    result = run("check-config", str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 3, result.stderr
    assert lines[0].startswith(f"{bad}:4: ")
    assert "fortnight" in lines[0]
    assert any(line.startswith(f"{bad}:5: ") for line in lines)
    assert any(line.startswith(f"{bad}:6: ") and "colour" in line for line in lines)


def test_hash_key_matches_the_example_keys_file() -> None:
    result = run("hash-key", "demo-free-key")
    digest = result.stdout.strip()
    assert digest == hash_key("demo-free-key")
    assert digest in (ROOT / "config" / "api_keys.yaml").read_text()
    piped = run("hash-key", stdin="demo-free-key\n")
    assert piped.stdout.strip() == digest


def test_serve_refuses_a_broken_policy_with_file_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("domain: d\nbogus: 1\n")
    result = run("serve", "--config", str(tmp_path), "--metrics-listen", "none")
    assert result.returncode == 1
    assert f"{tmp_path / 'p.yaml'}:2: " in result.stderr


def test_serve_reports_a_bad_store_url_without_its_password(tmp_path: Path) -> None:
    result = run(
        "serve",
        "--config",
        str(ROOT / "config"),
        "--metrics-listen",
        "none",
        "--store",
        "mongodb://admin:hunter2@localhost:1",
    )
    assert result.returncode == 2
    assert "hunter2" not in result.stderr
    assert "serve:" in result.stderr


def test_serve_reads_its_settings_from_the_environment() -> None:
    port = free_port()
    env = {
        **os.environ,
        "RATELIMIT_EXT_CONFIG": str(ROOT / "config"),
        "RATELIMIT_EXT_LISTEN": f"127.0.0.1:{port}",
        "RATELIMIT_EXT_METRICS_LISTEN": "none",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ratelimit_ext", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        status = _wait_serving(port, deadline=time.monotonic() + 15)
        assert status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _wait_serving(port: int, deadline: float) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return int(reply.status)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_runs_on_the_event_loop_asked_for(
    tmp_path: Path, event_loop: str
) -> None:
    args = ("--event-loop", event_loop)

    with ServerProcess(
        ROOT / "config", tmp_path, metrics=False, extra_args=args
    ) as server:
        log = server.log_text()

    assert server.returncode == 0
    assert f"event loop {event_loop}" in log
