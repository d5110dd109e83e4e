"""Tracks whether the counter store answers, logging transitions only."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class StoreHealth:
    """Healthy until a call fails; logs when that changes, not on every call."""

    __slots__ = ("_failures", "healthy", "store_name")

    def __init__(self, store_name: str) -> None:
        self.store_name = store_name
        self.healthy = True
        self._failures = 0

    def succeeded(self) -> None:
        if not self.healthy:
            logger.info(
                "store %s answers again after %d failed calls",
                self.store_name,
                self._failures,
            )
        self.healthy = True
        self._failures = 0

    def failed(self, error: Exception) -> None:
        self._failures += 1
        if self.healthy:
            logger.warning("store %s failed: %s", self.store_name, error)
        self.healthy = False
