"""Run ``python -m ratelimit_ext serve`` as a real subprocess for tests.

The harness writes no configuration itself: the test hands it a config path
and a store URL. It picks free loopback ports, sends the server's output to a
log file (quoted in every failure message), waits until gRPC health answers
SERVING, and stops the process with SIGTERM (SIGKILL if it does not exit).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .ports import LOOPBACK, free_port
from .process import LOG_TAIL_CHARS as LOG_TAIL_CHARS
from .process import ChildProcess, StartStop

SRC_DIR = Path(__file__).resolve().parents[2] / "src"
# Retry a refused connection quickly while the server starts up.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)


class ServerStartError(AssertionError):
    """The server exited or never turned SERVING; the message holds its log."""


def python_env() -> dict[str, str]:
    """The environment for a ``python -m ratelimit_ext`` child: unbuffered
    output and this checkout's ``src/`` first on ``PYTHONPATH``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC_DIR), env.get("PYTHONPATH", "")) if p
    )

    return env


class ServerProcess(StartStop):
    """One ratelimit-ext server process on kernel-chosen loopback ports."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        store: str = "memory",
        extra_args: Sequence[str] = (),
        metrics: bool = True,
        ready_timeout: float = 15.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.config = config
        self.store = store
        self.extra_args = tuple(extra_args)
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.log_path = workdir / f"ratelimit-ext-{self.port}.log"
        self._child = ChildProcess("server", self.log_path, error=ServerStartError)

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC listener (RLS, ext_authz, health)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, once ``stop`` or ``wait`` has seen the process end."""
        return self._child.returncode

    def command(self) -> list[str]:
        metrics = f"{LOOPBACK}:{self.metrics_port}" if self.metrics_port else "none"
        # The admin API defaults to a fixed port; tests that want it pass a
        # free one in extra_args.
        admin = (
            () if "--admin-listen" in self.extra_args else ("--admin-listen", "none")
        )
        return [
            sys.executable,
            "-m",
            "ratelimit_ext",
            "serve",
            "--config",
            str(self.config),
            "--listen",
            self.address,
            "--store",
            self.store,
            "--metrics-listen",
            metrics,
            *admin,
            *self.extra_args,
        ]

    def log_text(self) -> str:
        """The server's combined stdout and stderr so far (the tail if long)."""
        return self._child.log_text()

    def describe(self) -> str:
        """The command and log, for an assertion message."""
        return f"command: {' '.join(self.command())}\n{self._child.describe()}"

    def start(self) -> ServerProcess:
        self._child.start(
            self.command(),
            wait=self.wait_serving,
            stop_timeout=self.stop_timeout,
            env=python_env(),
        )

        return self

    def wait_serving(self) -> None:
        """Block until health "" answers SERVING; raise with the log if not."""
        serving = health_pb2.HealthCheckResponse.SERVING
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            self._child.wait_until(
                lambda: self._health(stub) == serving,
                timeout=self.ready_timeout,
                state="SERVING",
                describe=self.describe,
            )

    def health(self, service: str = "") -> int | None:
        """The health status of ``service`` now, or None if it did not answer."""
        with self.channel() as channel:
            return self._health(health_pb2_grpc.HealthStub(channel), service)

    def channel(self) -> grpc.Channel:
        """A new insecure channel to the server (close it, e.g. with ``with``)."""
        return grpc.insecure_channel(self.address, options=FAST_RECONNECT)

    def send_signal(self, sig: signal.Signals) -> None:
        self._child.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        return self._child.wait(timeout)

    def stop(self) -> int:
        """SIGTERM, wait ``stop_timeout``, then SIGKILL; return the exit code."""
        return self._child.stop(self.stop_timeout)

    @staticmethod
    def _health(stub: health_pb2_grpc.HealthStub, service: str = "") -> int | None:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = stub.Check(request, timeout=1.0)
        except grpc.RpcError:
            return None
        status: int = response.status

        return status
