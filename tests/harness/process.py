"""One child process of the test harness: start, wait until ready, stop.

``ChildProcess`` owns one ``subprocess.Popen``: it sends the child's stdout and
stderr to a log file, waits a bounded time for a readiness predicate (raising,
with the tail of the log, if the child exits first or time runs out), stops the
child with SIGTERM and, after a grace period, SIGKILL (also when waiting for
it fails). ``StartStop`` gives anything with ``start()`` and ``stop()`` the
``with`` statement.

    class Thing(StartStop):
        def __init__(self, workdir: Path) -> None:
            self._child = ChildProcess("thing", workdir / "thing.log")

        def start(self) -> Thing:
            self._child.start(["thing", "--serve"], wait=self._wait, stop_timeout=10)
            return self

        def _wait(self) -> None:
            self._child.wait_until(self._answers, timeout=15, state="serving")

        def stop(self) -> int:
            return self._child.stop(10)
"""

from __future__ import annotations

import abc
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

LOG_TAIL_CHARS = 8000
POLL_INTERVAL = 0.05


class StartStop(abc.ABC):
    """``with thing:`` calls ``thing.start()``, then ``thing.stop()`` on the way out."""

    @abc.abstractmethod
    def start(self) -> object:
        """Start; return once usable (or raise, having cleaned up)."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop what ``start`` started."""

    def __enter__(self) -> Self:
        self.start()

        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ChildProcess:
    """One child process named ``name`` with its output in ``log_path``.

    Start failures raise ``error`` (an ``AssertionError`` by default, so that
    they read as test failures) with the log's tail in the message.
    """

    def __init__(
        self,
        name: str,
        log_path: Path,
        *,
        error: type[Exception] = AssertionError,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.error = error
        self.returncode: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def started(self) -> bool:
        return self._popen is not None

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The running (or exited) process; RuntimeError before ``start``."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")

        return self._popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def start(
        self,
        command: Sequence[str],
        *,
        wait: Callable[[], object],
        stop_timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Run ``command`` (output to the log), then ``wait()`` until it is ready.

        If ``wait`` raises (anything, Ctrl-C included), the child is stopped
        (``stop(stop_timeout)``) before the exception goes on.
        """
        with self.log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait()
        except BaseException:
            self.stop(stop_timeout)
            raise

    def wait_until(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        state: str,
        describe: Callable[[], str] | None = None,
    ) -> None:
        """Poll ``ready()`` until true, for at most ``timeout`` seconds.

        Raises ``error`` if the child exits first or time runs out; the message
        names ``state`` (what it was waiting for) and ends with ``describe()``
        (default: this child's ``describe()``, the tail of its log).
        """
        describe = describe or self.describe
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.popen.poll()
            if code is not None:
                raise self.error(
                    f"{self.name} exited with {code} before {state}\n{describe()}"
                )
            if ready():
                return
            time.sleep(POLL_INTERVAL)
        raise self.error(f"{self.name} not {state} after {timeout}s\n{describe()}")

    def send_signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit by itself; return its exit code."""
        self.returncode = self.popen.wait(timeout=timeout)

        return self.returncode

    def stop(self, timeout: float) -> int:
        """SIGTERM, wait ``timeout``, then SIGKILL (and wait again); the exit code."""
        process = self.popen
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self.returncode = process.returncode

        return self.returncode

    def log_text(self) -> str:
        """The child's combined stdout and stderr so far (the tail if long)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log written>"
        if len(text) > LOG_TAIL_CHARS:
            return "...\n" + text[-LOG_TAIL_CHARS:]

        return text

    def describe(self) -> str:
        """The log's tail under a heading, for an assertion message."""
        return f"--- {self.name} log ---\n{self.log_text()}"
