"""``ratelimit-ext control-plane`` as a real subprocess for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from harness.ports import LOOPBACK, free_port
from harness.process import ChildProcess, StartStop
from harness.server import SRC_DIR, python_env
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.client import AdminClient

STOP_TIMEOUT = 10.0


class ControlPlaneProcess(StartStop):
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
        self._child = ChildProcess("control plane", self.log_path)

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
        """Its combined stdout and stderr so far (the tail if long)."""
        return self._child.log_text()

    def start(self) -> ControlPlaneProcess:
        self._child.start(
            self.command(),
            wait=self._wait_ready,
            stop_timeout=STOP_TIMEOUT,
            env=python_env(),
        )

        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        """Until ``GetServerInfo`` answers; AssertionError with the log if not."""
        with self.client() as client:

            def answers() -> bool:
                try:
                    client.call(
                        "GetServerInfo",
                        pb.GetServerInfoRequest(),
                        pb.GetServerInfoResponse,
                    )
                except grpc.RpcError:
                    return False
                return True

            self._child.wait_until(answers, timeout=timeout, state="ready")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; 0 if never started."""
        if not self._child.started:
            return 0
        return self._child.stop(STOP_TIMEOUT)


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
