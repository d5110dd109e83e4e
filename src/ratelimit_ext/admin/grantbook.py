"""Bypass grants and limit overrides: read, change and write their files.

Each operation reads the file under the config directory's lock, changes the
list, and writes it through ``PolicyWriter`` (validated with the real loader
together with every other policy file, atomic, versioned). The engine picks
the new file up through the normal reload path; expiry needs no write, but
``sweep`` removes expired entries so the files stay short.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ratelimit_ext.admin.errors import Conflict, InvalidRequest, NotFound
from ratelimit_ext.admin.grants import (
    BYPASS_FILE,
    GRANT_PREFIX,
    OVERRIDE_PREFIX,
    OVERRIDES_FILE,
    GrantRecord,
    GrantState,
    next_id,
    parse_grants,
    render_grants,
)
from ratelimit_ext.admin.writer import Change, PolicyWriter
from ratelimit_ext.policy.model import BypassMode, BypassSubject


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """A grant as asked for: no id means the next free one."""

    subject: BypassSubject
    mode: BypassMode
    reason: str
    expires_at: float
    factor: float | None = None
    starts_at: float | None = None
    requires_approval: bool = False
    id: str = ""


@dataclass(frozen=True, slots=True)
class GrantChange:
    change: Change
    record: GrantRecord


class GrantBook:
    """The grants of ``generated/bypass.yaml`` and ``generated/overrides.yaml``."""

    def __init__(
        self, writer: PolicyWriter, clock: Callable[[], float] = time.time
    ) -> None:
        self._writer = writer
        self._clock = clock

    def entries(self) -> tuple[list[GrantRecord], list[GrantRecord]]:
        """(grants, overrides), in file order."""
        return self._read(BYPASS_FILE), self._read(OVERRIDES_FILE)

    def grant(self, request: GrantRequest, actor: str) -> GrantChange:
        now = self._clock()
        if _whole(request.expires_at) <= now:
            raise InvalidRequest("expires_at: must be in the future")
        with self._writer.transaction():
            grants, overrides = self.entries()
            taken = grants + overrides
            grant_id = request.id or next_id(GRANT_PREFIX, _year(now), taken)
            if any(record.id == grant_id for record in taken):
                raise Conflict(f"a grant {grant_id!r} already exists")
            record = GrantRecord(
                id=grant_id,
                subject=request.subject,
                mode=request.mode,
                reason=request.reason,
                actor=actor,
                expires_at=_whole(request.expires_at),
                starts_at=None
                if request.starts_at is None
                else _whole(request.starts_at),
                factor=request.factor,
                requires_approval=request.requires_approval,
            )
            change = self._store(BYPASS_FILE, [*grants, record], actor, "GrantBypass")
        return GrantChange(_described(change, None, record), record)

    def approve(self, grant_id: str, actor: str) -> GrantChange:
        with self._writer.transaction():
            grants = self._read(BYPASS_FILE)
            index, record = _find(grants, grant_id)
            _check_approvable(record, actor, self._clock())
            approved = replace(record, approved_by=actor)
            grants[index] = approved
            change = self._store(BYPASS_FILE, grants, actor, "ApproveBypass")
        return GrantChange(_described(change, record, approved), approved)

    def revoke(self, grant_id: str, actor: str) -> GrantChange:
        with self._writer.transaction():
            grants = self._read(BYPASS_FILE)
            index, record = _find(grants, grant_id)
            del grants[index]
            change = self._store(BYPASS_FILE, grants, actor, "RevokeBypass")
        return GrantChange(_described(change, record, None), record)

    def set_override(
        self,
        subject: BypassSubject,
        factor: float,
        expires_at: float,
        reason: str,
        actor: str,
    ) -> GrantChange:
        """The subject's limits times ``factor`` until ``expires_at``; replaces."""
        now = self._clock()
        if subject.identity is None and subject.domain is None:
            raise InvalidRequest(
                "subject: an override is for an identity or a descriptor"
            )
        if _whole(expires_at) <= now:
            raise InvalidRequest("expires_at: must be in the future")
        with self._writer.transaction():
            grants, overrides = self.entries()
            found = [i for i, r in enumerate(overrides) if r.subject == subject]
            before = overrides[found[0]] if found else None
            override_id = (
                before.id
                if before is not None
                else next_id(OVERRIDE_PREFIX, _year(now), grants + overrides)
            )
            record = GrantRecord(
                id=override_id,
                subject=subject,
                mode=BypassMode.PARTIAL,
                reason=reason,
                actor=actor,
                expires_at=_whole(expires_at),
                factor=factor,
            )
            if found:
                overrides[found[0]] = record
            else:
                overrides.append(record)
            change = self._store(OVERRIDES_FILE, overrides, actor, "SetOverride")
        return GrantChange(_described(change, before, record), record)

    def clear_override(
        self, override_id: str, subject: BypassSubject | None, actor: str
    ) -> GrantChange:
        with self._writer.transaction():
            overrides = self._read(OVERRIDES_FILE)
            if override_id:
                index, record = _find(overrides, override_id)
            else:
                matching = [i for i, r in enumerate(overrides) if r.subject == subject]
                if not matching:
                    raise NotFound("no override for that subject")
                index, record = matching[0], overrides[matching[0]]
            del overrides[index]
            change = self._store(OVERRIDES_FILE, overrides, actor, "ClearOverride")
        return GrantChange(_described(change, record, None), record)

    def sweep(self, actor: str) -> list[GrantRecord]:
        """Remove expired grants and overrides (one write); returns them."""
        now = self._clock()
        with self._writer.transaction():
            grants, overrides = self.entries()
            expired = [
                r for r in grants + overrides if r.state(now) is GrantState.EXPIRED
            ]
            if not expired:
                return []
            changes: dict[str, bytes | None] = {}
            for file, records in ((BYPASS_FILE, grants), (OVERRIDES_FILE, overrides)):
                kept = [r for r in records if r.state(now) is not GrantState.EXPIRED]
                if len(kept) != len(records):
                    changes[file] = render_grants(kept)
            self._writer.write(changes, actor=actor, action="sweep expired")
        return expired

    def _read(self, file: str) -> list[GrantRecord]:
        return parse_grants(self._writer.directory.files().get(file), file)

    def _store(
        self, file: str, records: list[GrantRecord], actor: str, action: str
    ) -> Change:
        written, version = self._writer.write(
            {file: render_grants(records)}, actor=actor, action=action
        )
        return Change(
            file, None, None, written.digest, written.previous_digest, version
        )


def _described(
    change: Change, before: GrantRecord | None, after: GrantRecord | None
) -> Change:
    return replace(
        change,
        before=None if before is None else before.as_json(),
        after=None if after is None else after.as_json(),
    )


def _find(records: list[GrantRecord], grant_id: str) -> tuple[int, GrantRecord]:
    for index, record in enumerate(records):
        if record.id == grant_id:
            return index, record
    raise NotFound(f"no grant {grant_id!r}")


def _check_approvable(record: GrantRecord, actor: str, now: float) -> None:
    if not record.requires_approval:
        raise Conflict(f"grant {record.id!r} does not require approval")
    if record.approved_by is not None:
        raise Conflict(
            f"grant {record.id!r} is already approved by {record.approved_by}"
        )
    if record.state(now) is GrantState.EXPIRED:
        raise Conflict(f"grant {record.id!r} has expired")
    if actor.strip().lower() == record.actor.strip().lower():
        raise Conflict(
            f"grant {record.id!r} was requested by {record.actor}: "
            "a second actor must approve it"
        )


def _whole(seconds: float) -> float:
    """Times are written to the whole second (rounded down, so a grant never
    outlives what was asked); records stay equal to their YAML."""
    return float(int(seconds))


def _year(now: float) -> int:
    return datetime.fromtimestamp(now, UTC).year
