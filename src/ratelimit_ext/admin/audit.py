"""The audit trail of mutating admin calls: who, what, when, before and after.

Each record is one JSON line appended to the audit file (by default
``audit.jsonl`` beside the config directory) and the same line is logged by
the ``ratelimit_ext.audit`` logger. Records hold names, grant fields and
digests only: tokens never reach this module, and policy file contents are
recorded as their SHA-256.

A server whose store is Redis or Redis Cluster also appends each record to
the store's capped audit list (``store/auditlist.py``), which every replica
shares; ``read`` answers from that list, or from the file when the store
cannot answer. A record the store refused is logged and stays in the file.

``append`` and ``newest`` block (async callers run them in a worker thread);
``record`` and ``read`` are the async entries that also use the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.auditlist import StoredAuditList

logger = logging.getLogger("ratelimit_ext.audit")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: float
    actor: str
    peer: str
    principal: str
    method: str
    target: str
    outcome: str
    before: Any = None
    after: Any = None


class AuditLog:
    """Appends records to a JSON-lines file (and the store's list, if any)."""

    def __init__(self, path: Path, store: StoredAuditList | None = None) -> None:
        self.path = path
        self.store = store
        self._lock = threading.Lock()

    async def record(self, record: AuditRecord) -> None:
        """Append to the file (off the loop), then to the store's list.

        A store that cannot take it is logged, not raised: the change has
        been made, and the file and the log line keep the record.
        """
        line = _line(record)
        await asyncio.to_thread(self._append_line, line)
        if self.store is None:
            return
        try:
            await self.store.append(line)
        except StoreError as exc:
            logger.warning("audit record kept in %s only: %s", self.path, exc)

    async def read(self, limit: int) -> list[AuditRecord]:
        """The last ``limit`` records: the store's list, else the file."""
        if self.store is not None:
            try:
                lines = await self.store.newest(limit)
            except StoreError as exc:
                logger.warning("reading the audit file %s instead: %s", self.path, exc)
            else:
                return _parsed(lines)
        return await asyncio.to_thread(self.newest, limit)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def append(self, record: AuditRecord) -> None:
        """Log the record, then append it to the file.

        A file that cannot be written is logged as an error, not raised: the
        change it records has been made, and the log line above keeps it.
        """
        self._append_line(_line(record))

    def _append_line(self, line: str) -> None:
        logger.info("audit %s", line)
        try:
            with self._lock:
                self._write(line)
        except OSError as exc:
            logger.error("cannot append to the audit log %s: %s", self.path, exc)

    def _write(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def newest(self, limit: int) -> list[AuditRecord]:
        """The last ``limit`` records, oldest first; unreadable lines skipped."""
        try:
            with self.path.open(encoding="utf-8", errors="replace") as lines:
                tail = deque(lines, maxlen=limit)
        except FileNotFoundError:
            return []

        return _parsed(tail)


def _line(record: AuditRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True, default=str)


def _parsed(lines: Iterable[str]) -> list[AuditRecord]:
    """The records of ``lines``, in order; unreadable lines skipped."""
    records = (_parse(line) for line in lines)

    return [record for record in records if record is not None]


def _parse(line: str) -> AuditRecord | None:
    try:
        return AuditRecord(**json.loads(line))
    except (ValueError, TypeError):
        return None
