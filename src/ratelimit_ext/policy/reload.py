"""Keeping the policy in force in step with the policy files on disk.

``PolicyReloader`` watches the ``--config`` path with ``watchfiles``
(inotify on Linux) and, once a burst of changes has gone quiet, reads the
files again. Files whose digest is already known are left alone, so the many
steps of a Kubernetes ConfigMap update (new ``..<timestamp>`` directory,
``..data`` symlink swap, old directory removed) or of an editor's
write-and-rename lead to one reload at most. A changed set is loaded and
compiled in a worker thread and swapped into ``ActivePolicy`` only if it is
valid. An invalid set is logged once, each problem as ``file:line:
message``, and the last good policy stays in force. A slow periodic check
catches what the watcher cannot see, such as a symlink into a directory that
is not watched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, awatch

from ratelimit_ext.errors import PolicyError, Problem
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledPolicy
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.sources import digest, read_sources
from ratelimit_ext.telemetry import Telemetry

logger = logging.getLogger(__name__)

ChangeFilter = Callable[[Change, str], bool]


@dataclass(frozen=True, slots=True)
class ReloadSettings:
    """How quickly changes are picked up.

    ``quiet_ms``: a burst of changes is read once nothing has changed for this
    long; ``max_burst_ms``: a burst that keeps going is read at least this
    often; ``recheck_seconds``: the periodic digest check (catches changes the
    watcher missed); ``retry_seconds``: the wait before watching again after
    the watcher failed (e.g. the directory was missing).
    """

    quiet_ms: int = 100
    max_burst_ms: int = 1000
    recheck_seconds: float = 30.0
    retry_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.quiet_ms <= self.max_burst_ms:
            raise ValueError("quiet_ms must be positive and at most max_burst_ms")
        if self.recheck_seconds <= 0 or self.retry_seconds <= 0:
            raise ValueError("recheck_seconds and retry_seconds must be positive")


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """The policy files as health details report them.

    ``digest`` and ``loaded_at`` (Unix time) describe the policy in force.
    ``rejected_digest`` and ``problems`` are set while the files on disk are
    a set that was rejected; they clear once valid files are in force again.
    """

    digest: str
    loaded_at: float
    reloads: int = 0
    rejections: int = 0
    rejected_digest: str | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Unchanged:
    digest: str


@dataclass(frozen=True, slots=True)
class _Rejected:
    digest: str
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Loaded:
    compiled: CompiledPolicy
    seconds: float


_Outcome = _Unchanged | _Rejected | _Loaded


class PolicyReloader:
    """Owns the freshness of ``ActivePolicy``: watches, reloads, swaps."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        active: ActivePolicy,
        telemetry: Telemetry,
        settings: ReloadSettings | None = None,
    ) -> None:
        self._path = Path(path)
        self._active = active
        self._telemetry = telemetry
        self._settings = settings or ReloadSettings()
        self._status = ReloadStatus(active.current.policy.digest, time.time())
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_failing = False

    @property
    def status(self) -> ReloadStatus:
        return self._status

    async def start(self) -> None:
        """Watch from now on, then catch up on changes made before watching."""
        if self._tasks:
            raise RuntimeError("policy reloader already started")
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._watch(), name="policy-watch"),
            asyncio.create_task(self._recheck_periodically(), name="policy-recheck"),
        ]
        await asyncio.sleep(0)  # the watch task registers its watches first
        await self._check_logged()
        logger.info(
            "watching %s for policy changes (periodic check every %.0fs)",
            self._path,
            self._settings.recheck_seconds,
        )

    async def stop(self) -> None:
        """Stop watching; a reload already running is allowed to finish."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def check(self) -> ReloadStatus:
        """Read the files now; swap a valid changed set in. Returns the status."""
        async with self._lock:
            known = {self._status.digest, self._status.rejected_digest}
            outcome = await asyncio.to_thread(_read, self._path, known)
            self._apply(outcome)

        return self._status

    # --- outcomes -------------------------------------------------------------

    def _apply(self, outcome: _Outcome) -> None:
        if isinstance(outcome, _Loaded):
            self._apply_loaded(outcome)
        elif isinstance(outcome, _Rejected):
            self._apply_rejected(outcome)
        elif outcome.digest == self._status.digest:
            self._clear_rejection()

    def _apply_loaded(self, loaded: _Loaded) -> None:
        policy = loaded.compiled.policy
        previous = self._status
        if policy.digest == previous.digest:
            self._clear_rejection()
            return
        self._active.swap(loaded.compiled)
        self._status = ReloadStatus(
            policy.digest,
            time.time(),
            reloads=previous.reloads + 1,
            rejections=previous.rejections,
        )
        self._telemetry.record_policy_reload("ok")
        self._telemetry.record_policy_in_force(policy.digest, self._status.loaded_at)
        logger.info(
            "policy reloaded: %s -> %s, %d domains, %d API keys, built in %.0f ms",
            previous.digest[:12],
            policy.digest[:12],
            len(policy.domains),
            len(policy.api_keys),
            loaded.seconds * 1000,
        )

    def _apply_rejected(self, rejected: _Rejected) -> None:
        previous = self._status
        if (rejected.digest, rejected.problems) == (
            previous.rejected_digest,
            previous.problems,
        ):
            return
        self._status = ReloadStatus(
            previous.digest,
            previous.loaded_at,
            reloads=previous.reloads,
            rejections=previous.rejections + 1,
            rejected_digest=rejected.digest,
            problems=rejected.problems,
        )
        self._telemetry.record_policy_reload("failed")
        logger.warning(
            "policy change rejected (%d problems), still serving %s",
            len(rejected.problems),
            previous.digest[:12],
        )
        for line in rejected.problems:
            logger.warning("policy rejected: %s", line)

    def _clear_rejection(self) -> None:
        previous = self._status
        if previous.rejected_digest is None:
            return
        self._status = ReloadStatus(
            previous.digest,
            previous.loaded_at,
            reloads=previous.reloads,
            rejections=previous.rejections,
        )
        logger.info("policy files are back to %s, in force", previous.digest[:12])

    # --- tasks ----------------------------------------------------------------

    async def _check_logged(self) -> None:
        """``check``, with a bug logged instead of ending the task that called."""
        try:
            await self.check()
        except Exception:
            logger.exception("policy reload failed; keeping the policy in force")
            self._telemetry.record_policy_reload("failed")

    async def _watch(self) -> None:
        root, recursive, relevant = _watch_plan(self._path)
        while not self._stopping.is_set():
            try:
                await self._watch_root(root, recursive, relevant)
            except (OSError, RuntimeError) as exc:
                self._watch_failed(root, exc)
                await self._stopped_within(self._settings.retry_seconds)

    async def _watch_root(
        self, root: Path, recursive: bool, relevant: ChangeFilter | None
    ) -> None:
        """Watch until stopped, or until ``root`` is removed or replaced."""
        identity = _identity(root)
        if self._watch_failing:
            self._watch_recovered(root)
            # Runs once awatch below has registered its watches (its first
            # await): catches up on changes made while nothing watched.
            self._tasks = [task for task in self._tasks if not task.done()]
            self._tasks.append(asyncio.create_task(self._check_logged()))
        changes = awatch(
            root,
            watch_filter=relevant,
            debounce=self._settings.max_burst_ms,
            step=self._settings.quiet_ms,
            stop_event=self._stopping,
            recursive=recursive,
        )
        async with aclosing(changes):
            async for _ in changes:
                await self._check_logged()
                if _identity(root) != identity:
                    return  # a new directory at that path: watch it instead

    def _watch_failed(self, root: Path, exc: Exception) -> None:
        if not self._watch_failing:
            logger.warning(
                "cannot watch %s (%s); retrying every %.0fs, periodic checks go on",
                root,
                exc,
                self._settings.retry_seconds,
            )
        self._watch_failing = True

    def _watch_recovered(self, root: Path) -> None:
        logger.info("watching %s again", root)
        self._watch_failing = False

    async def _recheck_periodically(self) -> None:
        while not await self._stopped_within(self._settings.recheck_seconds):
            await self._check_logged()

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False

        return True


# --- worker thread --------------------------------------------------------------


def _read(path: Path, known: set[str | None]) -> _Outcome:
    """Runs in a worker thread: digest first, parse and compile only if new."""
    problems: list[Problem] = []
    found = digest(read_sources(path, problems))
    if found in known and not problems:
        return _Unchanged(found)
    started = time.monotonic()
    try:
        compiled = CompiledPolicy.build(load_policy(path))
    except PolicyError as exc:
        return _Rejected(found, tuple(str(problem) for problem in exc.problems))

    return _Loaded(compiled, time.monotonic() - started)


def _identity(path: Path) -> tuple[int, int]:
    """Device and inode: tells a replaced directory from the one watched."""
    stat = path.stat()

    return stat.st_dev, stat.st_ino


def _watch_plan(path: Path) -> tuple[Path, bool, ChangeFilter | None]:
    """(what to watch, recursively?, which changes count) for a config path.

    A directory is watched whole, hidden entries included: Kubernetes swaps
    its ``..data`` symlink. For one file the watch is on its directory (an
    editor's rename replaces the file itself), counting changes to that name
    and to Kubernetes' ``..`` entries.
    """
    if path.is_dir():
        return path, True, None
    name = path.name

    def relevant(_change: Change, changed: str) -> bool:
        changed_name = os.path.basename(changed)
        return changed_name == name or changed_name.startswith("..")

    return path.parent, False, relevant
