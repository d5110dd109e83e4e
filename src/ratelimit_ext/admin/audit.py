"""The audit trail of mutating admin calls: who, what, when, before and after.

Each record is one JSON line appended to the audit file (by default
``audit.jsonl`` beside the config directory) and the same line is logged by
the ``ratelimit_ext.audit`` logger. Records hold names, grant fields and
digests only: tokens never reach this module, and policy file contents are
recorded as their SHA-256.

Blocking; async callers run it in a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    """Appends records to a JSON-lines file and reads the newest back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: AuditRecord) -> None:
        """Log the record, then append it to the file.

        A file that cannot be written is logged as an error, not raised: the
        change it records has been made, and the log line above keeps it.
        """
        line = json.dumps(asdict(record), sort_keys=True, default=str)
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
        records = (_parse(line) for line in tail)

        return [record for record in records if record is not None]


def _parse(line: str) -> AuditRecord | None:
    try:
        return AuditRecord(**json.loads(line))
    except (ValueError, TypeError):
        return None
