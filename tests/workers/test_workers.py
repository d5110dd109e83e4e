"""``serve --workers N``: one port, several processes, one supervisor.

The process tests run a real supervisor with two workers on the Valkey
store. Which worker answered is read from that worker's own metrics port;
which process that is, from the log lines that name worker, port and PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from harness.ports import LOOPBACK, free_port
from harness.server import SRC_DIR
from harness.valkey import ValkeyServer
from ratelimit_ext.cli import main
from ratelimit_ext.counting import CountingSettings
from ratelimit_ext.server import ServeSettings
from ratelimit_ext.workers import MAX_RESTARTS, worker_settings
from workers.supervised import (
    NO_ADMIN,
    WorkersProcess,
    alive,
    call_on_new_connection,
    parent_of,
)

DOMAIN = "workers"
OK = rls_pb2.RateLimitResponse.OK
MAX_CONNECTIONS = 64
"""Fresh connections tried before giving up on reaching both workers.

The kernel hashes each connection to one of two sockets: after 64, the odds
that one worker got none are 2 in 2**64.
"""
POLICY = f"""\
domain: {DOMAIN}
descriptors:
  - key: generic_key
    value: probe
    rate_limit: {{unit: day, requests_per_unit: 1000000000}}
"""


def _request() -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain=DOMAIN)
    request.descriptors.add().entries.add(key="generic_key", value="probe")

    return request


@pytest.fixture
def config(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "policy.yaml").write_text(POLICY)

    return directory


@pytest.fixture
def workers(
    config: Path, tmp_path: Path, valkey: ValkeyServer
) -> Iterator[WorkersProcess]:
    """A started supervisor with two workers on the session's Valkey."""
    server = WorkersProcess(config, tmp_path, store=valkey.url)
    with server:
        server.wait_all_serving()
        yield server


# --- settings: refused combinations, what each worker gets --------------------


def test_one_worker_keeps_the_port_exclusive(config: Path) -> None:
    """The default is one process that does not share its port."""
    settings = ServeSettings(config=config)

    assert (settings.workers, settings.reuse_port) == (1, False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": 0}, "--workers must be at least 1"),
        ({"workers": 2, "store": "memory"}, "needs a shared store"),
        ({"workers": 2, "listen": "127.0.0.1:0"}, "fixed --listen port"),
        ({"workers": 3, "metrics_listen": "127.0.0.1:65534"}, "past 65535"),
    ],
)
def test_settings_refuse_what_workers_cannot_share(
    config: Path, changes: dict[str, object], message: str
) -> None:
    """Each refused combination names the flag that makes it wrong."""
    base = {"config": config, "store": "redis://127.0.0.1:6379/0"}

    with pytest.raises(ValueError, match=message):
        ServeSettings(**{**base, **changes})  # type: ignore[arg-type]


def test_each_worker_shares_the_port_and_has_its_own_metrics(config: Path) -> None:
    """Worker i: SO_REUSEPORT on --listen, metrics on port + i, one replica more."""
    settings = ServeSettings(
        config=config,
        listen="127.0.0.1:8081",
        store="redis://127.0.0.1:6379/0",
        metrics_listen="127.0.0.1:9090",
        counting=CountingSettings(replicas=3),
        workers=2,
    )

    second = worker_settings(settings, 1)

    assert second == replace(
        settings,
        workers=1,
        reuse_port=True,
        metrics_listen="127.0.0.1:9091",
        counting=CountingSettings(replicas=6),
    )
    assert (
        worker_settings(replace(settings, metrics_listen=None), 1).metrics_listen
        is None
    )


def test_memory_store_with_workers_exits_2(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Separate counters per worker would multiply every limit: refused at start."""
    argv = ["serve", "--config", str(config), "--workers", "2", "--store", "memory"]

    assert main(argv) == 2
    assert "needs a shared store" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--listen", "--admin-listen"])
def test_port_in_use_exits_2_before_any_worker_starts(
    config: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """A port the workers would share but another socket holds is an error."""
    ports = {"--listen": f"{LOOPBACK}:{free_port()}", "--admin-listen": "none"}
    argv = ["serve", "--config", str(config), "--workers", "2"]
    argv += ["--store", "redis://127.0.0.1:1/0", "--metrics-listen", "none"]
    with socket.create_server((LOOPBACK, 0)) as holder:
        ports[flag] = taken = f"{LOOPBACK}:{holder.getsockname()[1]}"
        code = main([*argv, *(word for pair in ports.items() for word in pair)])

    assert code == 2
    assert f"{flag} {taken}: Address already in use" in capsys.readouterr().err


def test_invalid_policy_exits_1_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The supervisor checks the policy first: the same lines and status as one."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("unit: day", "unit: fortnight"))
    argv = ["serve", "--config", str(bad), "--workers", "2"]

    assert main([*argv, "--store", "redis://127.0.0.1:1/0"]) == 1
    assert f"{bad}:5:" in capsys.readouterr().err


# --- real processes -----------------------------------------------------------


@pytest.mark.redis
def test_both_workers_answer_on_one_port(workers: WorkersProcess) -> None:
    """Fresh connections reach both worker processes, and only them."""
    pids = workers.worker_pids()
    assert sorted(pids) == [0, 1]
    assert len(set(pids.values())) == 2
    assert all(parent_of(pid) == workers.pid for pid in pids.values())
    for index, pid in pids.items():
        workers.wait_for_log(
            rf"worker {index} \[{pid}\] .*metrics listening on .*:"
            rf"{workers.worker_metrics_port(index)}/"
        )

    calls, counts = 0, [0.0, 0.0]
    while calls < MAX_CONNECTIONS and not all(counts):
        for _ in range(8):
            assert call_on_new_connection(workers.address, _request()) == OK
            calls += 1
        counts = [workers.decisions(index) for index in (0, 1)]

    assert all(counts), f"one worker got none of {calls} connections: {counts}"
    assert sum(counts) == calls


@pytest.mark.redis
def test_sigterm_stops_every_worker_and_exits_0(workers: WorkersProcess) -> None:
    """SIGTERM to the supervisor reaches every worker; all exit, status 0."""
    pids = workers.worker_pids().values()

    assert workers.stop() == 0
    assert not any(alive(pid) for pid in pids)
    log = workers.full_log()
    assert log.count("ratelimit_ext.server: stopped") == 2
    assert "all workers stopped" in log


@pytest.mark.redis
def test_killed_worker_is_replaced(workers: WorkersProcess) -> None:
    """A worker killed after it served is replaced; the others never stop."""
    before = workers.worker_pids()

    os.kill(before[1], signal.SIGKILL)
    workers.wait_for_log(
        rf"worker 1 \(pid {before[1]}\) was killed by SIGKILL; starting a new one"
    )
    (serving,) = workers.wait_for_log(r"worker 1 \(pid (\d+)\) serving")

    after = workers.worker_pids()
    assert int(serving[1]) == after[1] != before[1]
    assert after[0] == before[0] and alive(after[0]) and alive(after[1])
    for _ in range(8):
        assert call_on_new_connection(workers.address, _request()) == OK
    assert workers.decisions(1) >= 0  # the new worker's metrics port is back
    assert workers.stop() == 0


@pytest.mark.redis
def test_worker_dying_too_often_stops_the_supervisor(
    workers: WorkersProcess,
) -> None:
    """After MAX_RESTARTS replacements within the window, the next death is fatal."""
    for replaced in range(1, MAX_RESTARTS + 1):
        os.kill(workers.worker_pids()[0], signal.SIGKILL)
        workers.wait_for_log(r"worker 0 \(pid \d+\) serving", count=replaced)
    last = workers.worker_pids()

    os.kill(last[0], signal.SIGKILL)
    code = workers.wait(timeout=30.0)

    assert code == 2, workers.describe()
    assert "giving up" in workers.full_log()
    assert not alive(last[1])


@pytest.mark.redis
def test_worker_failing_at_start_fails_the_supervisor(
    config: Path, tmp_path: Path, valkey: ValkeyServer
) -> None:
    """A worker that cannot start stops the others; a restart would not cure it."""
    server = WorkersProcess(config, tmp_path, store=valkey.url)
    paths = (str(SRC_DIR), os.environ.get("PYTHONPATH", ""))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))

    with socket.create_server((LOOPBACK, server.worker_metrics_port(1))):
        done = subprocess.run(
            server.command(), env=env, capture_output=True, text=True, timeout=60
        )

    assert done.returncode == 2, done.stderr
    assert "worker 1 (pid" in done.stderr
    assert "exited with status 2 before it served" in done.stderr
    assert "all workers stopped" in done.stderr


@pytest.mark.redis
def test_second_instance_on_a_taken_port_is_refused(
    workers: WorkersProcess, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SO_REUSEPORT is shared by workers of one supervisor, not by two instances."""
    argv = ["serve", "--config", str(config), "--listen", workers.address]
    argv += ["--workers", "2", "--store", "redis://127.0.0.1:1/0"]

    assert main([*argv, "--metrics-listen", "none", *NO_ADMIN]) == 2
    assert "Address already in use" in capsys.readouterr().err
