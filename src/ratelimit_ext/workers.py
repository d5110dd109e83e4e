"""Several server processes on one port: the supervisor and its workers.

``serve --workers N`` with N above 1 runs :func:`supervise` instead of a
server. The supervisor answers no requests itself: it starts N workers
(``python -m ratelimit_ext.workers``), each a whole ``Sidecar`` whose gRPC
port is opened with ``SO_REUSEPORT`` on the same ``--listen`` address, so the
kernel spreads new connections over them. Worker ``i`` serves its own metrics
on the ``--metrics-listen`` port + ``i``.

- Start: the supervisor checks the policy and that the port is free, so
  those mistakes fail as they do with one process. Each worker starts in its
  own process group (a terminal's Ctrl-C reaches the supervisor only) with
  SIGTERM and SIGINT blocked, and unblocks them once it serves: a signal
  during its start-up waits instead of killing it half-built.
- Stop: SIGTERM or SIGINT to the supervisor goes on to every worker as
  SIGTERM, and each stops within ``--grace``. A worker still running
  ``STOP_MARGIN`` seconds later is killed. The supervisor exits 0 if every
  worker exited 0.
- A worker that exits on its own after it served is replaced, at most
  ``MAX_RESTARTS`` times in ``RESTART_WINDOW`` seconds. A worker that exits
  before it serves (a start-up error, which a restart does not cure), or one
  exit too many, stops the other workers and fails the supervisor.
- A worker's stdin is a socket to the supervisor: its settings come in,
  "serving" goes out, and end-of-file tells the worker that the supervisor is
  gone (even if it was killed), so it stops instead of serving on alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

from ratelimit_ext import eventloop, logs
from ratelimit_ext.errors import PolicyError
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.server import ServeSettings, serve, split_host_port

logger = logging.getLogger("ratelimit_ext.workers")  # also when run as __main__

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
"""At most ``MAX_RESTARTS`` replaced workers in any window of this many seconds."""
STOP_MARGIN = 5.0
"""Seconds a stopping worker gets beyond ``--grace`` before it is killed."""
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_SERVING = b"s"
_LENGTH = struct.Struct("!I")


class WorkerFailure(RuntimeError):
    """A worker failed to start, kept dying, or did not stop cleanly."""


async def supervise(settings: ServeSettings) -> None:
    """Run ``settings.workers`` workers until SIGTERM or SIGINT."""
    await Supervisor(settings).run()


def worker_settings(settings: ServeSettings, index: int) -> ServeSettings:
    """What worker ``index`` serves with: the shared port, its own metrics port.

    Each worker is one more replica for the ``local`` failure policy, which
    then enforces limit / (replicas * workers) in every worker.
    """
    counting = replace(
        settings.counting, replicas=settings.counting.replicas * settings.workers
    )
    return replace(
        settings,
        workers=1,
        reuse_port=True,
        metrics_listen=_worker_metrics(settings.metrics_listen, index),
        counting=counting,
    )


def _worker_metrics(listen: str | None, index: int) -> str | None:
    if listen is None:
        return None
    host, port = split_host_port(listen, "--metrics-listen")
    if port == 0:
        return listen
    host = f"[{host}]" if ":" in host else host

    return f"{host}:{port + index}"


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    control: socket.socket
    serving: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe(self, code: int) -> str:
        name = f"worker {self.index} (pid {self.pid})"
        if code < 0:
            return f"{name} was killed by {signal.Signals(-code).name}"
        return f"{name} exited with status {code}"


class Supervisor:
    """Starts the workers, replaces the ones that die, stops them all."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._exits: dict[asyncio.Task[int], _Worker] = {}
        self._restarts: deque[float] = deque()
        self._stopping = asyncio.Event()
        self._announced = False

    async def run(self) -> None:
        _preflight(self.settings)
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._stopping.set)
        try:
            for index in range(self.settings.workers):
                await self._start(index)
            await self._watch()
        finally:
            unclean = await self._stop_all()
        if unclean:
            raise WorkerFailure("; ".join(unclean))

    async def _start(self, index: int) -> None:
        worker = await _spawn(index, worker_settings(self.settings, index))
        logger.info("worker %d started, pid %d", index, worker.pid)
        self._exits[asyncio.create_task(self._follow(worker))] = worker

    async def _follow(self, worker: _Worker) -> int:
        """The worker's exit status; marks it serving when it says so."""
        loop = asyncio.get_running_loop()
        try:
            said = await loop.sock_recv(worker.control, 1)
        except OSError:
            said = b""
        if said == _SERVING:
            worker.serving = True
            self._announce(worker)
        code = await worker.process.wait()
        worker.control.close()

        return code

    def _announce(self, worker: _Worker) -> None:
        if self._stopping.is_set():
            return
        if self._announced:
            logger.info("worker %d (pid %d) serving", worker.index, worker.pid)
            return
        workers = self._exits.values()
        if len(workers) < self.settings.workers or not all(w.serving for w in workers):
            return
        self._announced = True
        logger.info(
            "all %d workers serving on %s", len(self._exits), self.settings.listen
        )

    async def _watch(self) -> None:
        """Until a stop signal: replace workers that exit, or give up."""
        stop = asyncio.create_task(self._stopping.wait())
        try:
            while True:
                waiting = {stop, *self._exits}
                done, _ = await asyncio.wait(
                    waiting, return_when=asyncio.FIRST_COMPLETED
                )
                if stop in done:
                    return
                for task in done:
                    await self._replace(self._exits.pop(task), task.result())
        finally:
            stop.cancel()

    async def _replace(self, worker: _Worker, code: int) -> None:
        what = worker.describe(code)
        if not worker.serving:
            raise WorkerFailure(f"{what} before it served (its log says why)")
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            raise WorkerFailure(
                f"{what}; {MAX_RESTARTS} workers were already replaced in the"
                f" last {RESTART_WINDOW:.0f}s, giving up"
            )
        self._restarts.append(now)
        logger.error("%s; starting a new one", what)
        await self._start(worker.index)

    async def _stop_all(self) -> list[str]:
        """SIGTERM every worker, wait, kill stragglers; the unclean exits."""
        if not self._exits:
            return []
        logger.info("stopping the workers (%d running)", len(self._exits))
        for worker in self._exits.values():
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
        timeout = self.settings.grace_seconds + STOP_MARGIN
        _, late = await asyncio.wait(self._exits, timeout=timeout)
        for task in late:
            worker = self._exits[task]
            logger.error(
                "worker %d (pid %d) did not stop; killing it", worker.index, worker.pid
            )
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        if late:
            await asyncio.wait(late)
        codes = {task: task.result() for task in self._exits}
        logger.info("all workers stopped")

        return [self._exits[t].describe(c) for t, c in codes.items() if c != 0]


def _preflight(settings: ServeSettings) -> None:
    """Fail as one process would: an invalid policy, or a port in use.

    The workers open the gRPC and admin ports with ``SO_REUSEPORT``, which
    would share a port with another instance's workers instead of failing.
    """
    load_policy(settings.config)
    _check_free("--listen", settings.listen)
    if settings.admin.listen is not None:
        _check_free("--admin-listen", settings.admin.listen)


def _check_free(flag: str, listen: str) -> None:
    host, port = split_host_port(listen, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"{flag} {listen}: {exc.strerror}") from None


async def _spawn(index: int, settings: ServeSettings) -> _Worker:
    ours, theirs = socket.socketpair()
    with theirs, _stop_signals_blocked():
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ratelimit_ext.workers",
            stdin=theirs.fileno(),
            process_group=0,
        )
    ours.setblocking(False)
    level = logging.getLogger().getEffectiveLevel()
    payload = pickle.dumps((index, settings, level))
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):  # an early exit shows in its status
        await loop.sock_sendall(ours, _LENGTH.pack(len(payload)) + payload)

    return _Worker(index, process, ours)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM/SIGINT in this thread; a child started now inherits it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- the worker process ----------------------------------------------------------


def _worker_main() -> int:
    """One worker: settings from stdin, then ``serve`` until told to stop."""
    control = socket.socket(fileno=sys.stdin.fileno())
    index, settings, level = _receive(control)
    logs.configure(
        settings.log_format,
        level,
        text_format=f"%(asctime)s %(levelname)s worker {index} [%(process)d]"
        " %(name)s: %(message)s",
        fields={"worker": index, "pid": os.getpid()},
    )
    try:
        eventloop.run(
            serve(settings, on_serving=lambda: _serving(control)), settings.event_loop
        )
    except PolicyError as exc:
        for problem in exc.problems:
            logger.error("%s", problem)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        metrics = settings.metrics_listen or "none"
        logger.error(
            "cannot serve on %s (metrics %s): %s", settings.listen, metrics, exc
        )
        return 2

    return 0


def _receive(control: socket.socket) -> tuple[int, ServeSettings, int]:
    header = control.recv(_LENGTH.size, socket.MSG_WAITALL)
    (size,) = _LENGTH.unpack(header)
    index, settings, level = pickle.loads(control.recv(size, socket.MSG_WAITALL))
    if not isinstance(settings, ServeSettings):
        kind = type(settings).__name__  # never its repr: it may hold a password
        raise TypeError(f"worker settings: expected ServeSettings, got {kind}")

    return int(index), settings, int(level)


def _serving(control: socket.socket) -> None:
    """Tell the supervisor, accept stop signals, and stop if the supervisor goes."""
    control.sendall(_SERVING)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    asyncio.get_running_loop().add_reader(control.fileno(), _supervisor_gone, control)


def _supervisor_gone(control: socket.socket) -> None:
    try:
        more = control.recv(1)
    except OSError:
        more = b""
    if more:
        return
    asyncio.get_running_loop().remove_reader(control.fileno())
    logger.error("the supervisor is gone; stopping")
    signal.raise_signal(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(_worker_main())
