"""``ratelimit-ext control-plane`` as a real subprocess for tests."""

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

from harness.ports import LOOPBACK, free_port
from harness.server import SRC_DIR
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.client import AdminClient


class ControlPlaneProcess:
    """A control plane over ``config_dir`` with its admin API on a free port."""

    def __init__(
        self,
        config_dir: Path,
        workdir: Path,
        token_file: Path,
        *,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config_dir = config_dir
        self.token_file = token_file
        self.address = f"{LOOPBACK}:{free_port()}"
        self.extra_args = tuple(extra_args)
        self.log_path = workdir / f"control-plane-{self.address.split(':')[1]}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ratelimit_ext",
            "control-plane",
            "--config-dir",
            str(self.config_dir),
            "--listen",
            self.address,
            "--token-file",
            str(self.token_file),
            *self.extra_args,
        ]

    def client(self, actor: str = "cp-test@example.com") -> AdminClient:
        return AdminClient(self.address, token_file=self.token_file, actor=actor)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"

    def start(self) -> ControlPlaneProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(SRC_DIR))
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise AssertionError(f"control plane exited:\n{self.log_text()}")
                try:
                    client.call(
                        "GetServerInfo",
                        pb.GetServerInfoRequest(),
                        pb.GetServerInfoResponse,
                    )
                    return
                except grpc.RpcError:
                    time.sleep(0.05)
        raise AssertionError(f"control plane not ready:\n{self.log_text()}")

    def stop(self) -> int:
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def __enter__(self) -> ControlPlaneProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``ratelimit-ext ARGS`` as a process; its output as text."""
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    return subprocess.run(
        [sys.executable, "-m", "ratelimit_ext", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
