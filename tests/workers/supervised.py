"""``serve --workers N`` as a test process: worker PIDs, per-worker metrics.

The worker PIDs come from the supervisor's log lines (``worker I started,
pid P``); worker ``i`` serves metrics on the first metrics port + ``i``, so a
scrape of that port tells what that one process decided.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2

from harness.ports import LOOPBACK
from harness.server import ServerProcess

SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
"""A channel with this option opens its own TCP connection, shared with no other."""
DECISIONS = "ratelimit_ext_decisions_total"
NO_ADMIN = ("--admin-listen", "none")
"""The admin API's default port is one fixed port: off for servers under test."""
SLOW_STORE = ("--store-timeout", "0.5")
"""Servers, Valkey and the test share two cores: a store call may be slow."""
_STARTED = re.compile(r"worker (\d+) started, pid (\d+)")
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


class WorkersProcess(ServerProcess):
    """One supervisor with ``workers`` workers, metrics on consecutive ports."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        store: str,
        workers: int = 2,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            config,
            workdir,
            store=store,
            extra_args=("--workers", str(workers), *NO_ADMIN, *SLOW_STORE, *extra_args),
            ready_timeout=ready_timeout,
        )
        self.workers = workers
        self.metrics_port = free_port_run(workers)

    def worker_metrics_port(self, index: int) -> int:
        assert self.metrics_port is not None
        return self.metrics_port + index

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> the PID of its latest process, from the log."""
        return {int(i): int(pid) for i, pid in _STARTED.findall(self.full_log())}

    def wait_for_log(
        self, pattern: str, *, count: int = 1, timeout: float = 20.0
    ) -> list[re.Match[str]]:
        """The first ``count`` or more matches of ``pattern``, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.full_log()))
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, (
                f"{count} x {pattern!r} not logged in {timeout}s\n{self.describe()}"
            )
            time.sleep(0.05)

    def wait_all_serving(self) -> None:
        self.wait_for_log(r"all \d+ workers serving")

    def decisions(self, index: int) -> float:
        """All decisions worker ``index`` has made, from its own metrics port."""
        url = f"http://{LOOPBACK}:{self.worker_metrics_port(index)}/metrics"
        with urllib.request.urlopen(url, timeout=5.0) as answer:
            text: str = answer.read().decode()

        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(DECISIONS + "{")
        )


def call_on_new_connection(address: str, request: rls_pb2.RateLimitRequest) -> int:
    """One ``ShouldRateLimit`` over a fresh TCP connection; the overall code."""
    with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
        call = channel.unary_unary(
            SHOULD_RATE_LIMIT,
            request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
            response_deserializer=rls_pb2.RateLimitResponse.FromString,
        )
        response = call(request, timeout=10.0, wait_for_ready=True)
        code: int = response.overall_code

    return code


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False

    return True


def parent_of(pid: int) -> int:
    """The parent PID, from ``/proc/PID/stat`` (after the command in parentheses)."""
    stat = Path(f"/proc/{pid}/stat").read_text()

    return int(stat.rsplit(")", 1)[1].split()[1])


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free now.

    Picked below the kernel's ephemeral range, so no outgoing connection (to
    Valkey, say) can take one of them before the workers bind it.
    """
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError):
        low = 32768
    chooser = random.Random()
    for _ in range(200):
        base = chooser.randrange(10_000, low - count)
        if all(_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def _free(port: int) -> bool:
    with contextlib.suppress(OSError), socket.socket() as sock:
        sock.bind((LOOPBACK, port))
        return True
    return False
