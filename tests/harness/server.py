"""Run ``python -m ratelimit_ext serve`` as a real subprocess for tests.

The harness writes no configuration itself: the test hands it a config path
and a store URL. It picks free loopback ports, sends the server's output to a
log file (quoted in every failure message), waits until gRPC health answers
SERVING, and stops the process with SIGTERM (SIGKILL if it does not exit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .ports import LOOPBACK, free_port

SRC_DIR = Path(__file__).resolve().parents[2] / "src"
LOG_TAIL_CHARS = 8000
# Retry a refused connection quickly while the server starts up.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)


class ServerStartError(AssertionError):
    """The server exited or never turned SERVING; the message holds its log."""


class ServerProcess:
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
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC listener (RLS, ext_authz, health)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self._running().pid

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
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log written>"
        if len(text) > LOG_TAIL_CHARS:
            return "...\n" + text[-LOG_TAIL_CHARS:]

        return text

    def describe(self) -> str:
        """The command and log, for an assertion message."""
        return f"command: {' '.join(self.command())}\n--- server log ---\n" + (
            self.log_text()
        )

    def start(self) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SRC_DIR), env.get("PYTHONPATH", "")) if p
        )
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            self.wait_serving()
        except BaseException:
            self.stop()
            raise

        return self

    def wait_serving(self) -> None:
        """Block until health "" answers SERVING; raise with the log if not."""
        deadline = time.monotonic() + self.ready_timeout
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self._running().poll() is not None:
                    raise ServerStartError(
                        f"server exited with {self._running().returncode} "
                        f"before serving\n{self.describe()}"
                    )
                if self._health(stub) == health_pb2.HealthCheckResponse.SERVING:
                    return
                time.sleep(0.05)
        raise ServerStartError(
            f"server not SERVING after {self.ready_timeout}s\n{self.describe()}"
        )

    def health(self, service: str = "") -> int | None:
        """The health status of ``service`` now, or None if it did not answer."""
        with self.channel() as channel:
            return self._health(health_pb2_grpc.HealthStub(channel), service)

    def channel(self) -> grpc.Channel:
        """A new insecure channel to the server (close it, e.g. with ``with``)."""
        return grpc.insecure_channel(self.address, options=FAST_RECONNECT)

    def send_signal(self, sig: signal.Signals) -> None:
        self._running().send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        self.returncode = self._running().wait(timeout=timeout)

        return self.returncode

    def stop(self) -> int:
        """SIGTERM, wait ``stop_timeout``, then SIGKILL; return the exit code."""
        process = self._process
        if process is None:
            raise RuntimeError("server was never started")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout)
        self.returncode = process.returncode

        return self.returncode

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("server was never started")

        return self._process

    @staticmethod
    def _health(stub: health_pb2_grpc.HealthStub, service: str = "") -> int | None:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = stub.Check(request, timeout=1.0)
        except grpc.RpcError:
            return None
        status: int = response.status

        return status

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
