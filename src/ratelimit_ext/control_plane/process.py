"""The control plane process: owns ``generated/``, keeps it tidy, publishes it.

``ratelimit-ext control-plane --config-dir DIR`` runs until SIGTERM/SIGINT:

- it serves the admin API (role ``control-plane``) on ``--listen``, so the
  same ``ratelimit-ext admin`` commands grant, approve, revoke, override and
  roll back; every write is validated with the real loader against the whole
  directory, atomic, versioned in ``generated/.history/`` and audited;
- every ``sweep_seconds`` it removes expired grants and overrides (the
  engine already ignores them; this keeps the files short);
- publishing: without targets, ``DIR`` is the directory the servers watch
  (a shared volume or a synced ConfigMap) and writing is publishing; with
  ``--publish-to`` targets, every change of ``generated/`` is pushed to each
  server's admin API, and retried every ``sync_seconds`` until it lands.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ratelimit_ext.admin.grantbook import GrantBook
from ratelimit_ext.admin.history import GENERATED_DIR
from ratelimit_ext.admin.server import AdminServer, build_admin
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.admin.writer import PolicyWriter
from ratelimit_ext.control_plane.publish import Publisher
from ratelimit_ext.policy.loader import load_policy

logger = logging.getLogger(__name__)

ROLE = "control-plane"
DEFAULT_LISTEN = "127.0.0.1:8083"


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    config_dir: Path
    admin: AdminSettings = field(
        default_factory=lambda: AdminSettings(listen=DEFAULT_LISTEN)
    )
    publish_to: tuple[str, ...] = ()
    publish_token_file: Path | None = None
    sweep_seconds: float = 60.0
    sync_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.sweep_seconds <= 0 or self.sync_seconds <= 0:
            raise ValueError("--sweep-interval and --sync-interval must be positive")


class ControlPlane:
    """Serves the admin API over one directory; sweeps; publishes."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.settings = settings
        if not settings.config_dir.is_dir():
            raise ValueError(f"--config-dir {settings.config_dir}: not a directory")
        load_policy(settings.config_dir)  # PolicyError: refuse to start
        self._writer = PolicyWriter.for_directory(settings.config_dir)
        self._grants = GrantBook(self._writer)
        self._changed = asyncio.Event()
        self.publisher = (
            Publisher(
                self._writer,
                settings.publish_to,
                token_file=settings.publish_token_file,
            )
            if settings.publish_to
            else None
        )
        self.admin: AdminServer | None = None
        if settings.admin.listen is not None:
            self.admin = build_admin(
                settings.admin,
                settings.config_dir,
                role=ROLE,
                on_change=self._changed.set,
            )

    async def run(self, stopping: asyncio.Event) -> None:
        (self.settings.config_dir / GENERATED_DIR).mkdir(exist_ok=True)
        if self.admin is not None:
            await self.admin.start()
        mode = (
            f"pushing to {', '.join(self.settings.publish_to)}"
            if self.settings.publish_to
            else "writing into the shared directory"
        )
        logger.info("control plane over %s, %s", self.settings.config_dir, mode)
        try:
            await self._loop(stopping)
        finally:
            if self.admin is not None:
                await self.admin.stop(1.0)

    async def _loop(self, stopping: asyncio.Event) -> None:
        next_sweep = 0.0
        while not stopping.is_set():
            if time.monotonic() >= next_sweep:
                await self._sweep()
                next_sweep = time.monotonic() + self.settings.sweep_seconds
            if self.publisher is not None:
                await self._publish(self.publisher)
            until_sweep = max(0.0, next_sweep - time.monotonic())
            await self._wait(stopping, min(self.settings.sync_seconds, until_sweep))

    async def _publish(self, publisher: Publisher) -> None:
        try:
            await publisher.sync()
        except Exception:
            logger.exception("publishing failed; retrying later")

    async def _sweep(self) -> None:
        try:
            removed = await asyncio.to_thread(self._grants.sweep, ROLE)
        except Exception:
            logger.exception("sweeping expired grants failed; retrying later")
            return
        if removed:
            ids = ", ".join(record.id for record in removed)
            logger.info("removed %d expired grants/overrides: %s", len(removed), ids)

    async def _wait(self, stopping: asyncio.Event, seconds: float) -> None:
        """Until stopped, a change through the admin API, or ``seconds``."""
        waiters = {
            asyncio.ensure_future(stopping.wait()),
            asyncio.ensure_future(self._changed.wait()),
        }
        _, pending = await asyncio.wait(
            waiters,
            timeout=seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in pending:
            waiter.cancel()
        self._changed.clear()


async def run_control_plane(settings: ControlPlaneSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    control_plane = ControlPlane(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await control_plane.run(stopping)
    logger.info("control plane stopped")
