"""Admin protos <-> admin values: subjects, grants, times, versions, audit."""

from __future__ import annotations

import json

from google.protobuf.timestamp_pb2 import Timestamp

from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.audit import AuditRecord
from ratelimit_ext.admin.errors import InvalidRequest
from ratelimit_ext.admin.grants import GrantRecord, GrantState, check_subject
from ratelimit_ext.admin.history import Version
from ratelimit_ext.errors import Problem
from ratelimit_ext.policy.model import BypassMode, BypassSubject

_MODE_OF_PROTO: dict[int, BypassMode] = {
    pb.BYPASS_MODE_FULL: BypassMode.FULL,
    pb.BYPASS_MODE_PARTIAL: BypassMode.PARTIAL,
}
_PROTO_MODE = {
    BypassMode.FULL: pb.BYPASS_MODE_FULL,
    BypassMode.PARTIAL: pb.BYPASS_MODE_PARTIAL,
}
_PROTO_STATE = {
    GrantState.PENDING_APPROVAL: pb.GRANT_STATE_PENDING_APPROVAL,
    GrantState.SCHEDULED: pb.GRANT_STATE_SCHEDULED,
    GrantState.ACTIVE: pb.GRANT_STATE_ACTIVE,
    GrantState.EXPIRED: pb.GRANT_STATE_EXPIRED,
}


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def seconds_of(stamp: Timestamp) -> float:
    return float(stamp.ToNanoseconds()) / 1e9


def entries_of(entries: object, field: str) -> tuple[tuple[str, str], ...]:
    """Request entries that must all have a key and a value."""
    found = tuple((e.key, e.value) for e in entries)  # type: ignore[attr-defined]
    if any(not key for key, _ in found):
        raise InvalidRequest(f"{field}: every entry needs a key")
    return found


def subject_of(message: pb.Subject, field: str = "subject") -> BypassSubject:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest(
            f"{field}: required (identity, api key, tier or descriptor)"
        )
    if kind == "descriptor":
        entries = tuple(
            (e.key, e.value if e.HasField("value") else None)
            for e in message.descriptor.entries
        )
        subject = BypassSubject(domain=message.descriptor.domain, descriptor=entries)
    else:
        subject = BypassSubject(**{kind: getattr(message, kind)})
    check_subject(subject)
    return subject


def subject_proto(subject: BypassSubject) -> pb.Subject:
    if subject.identity is not None:
        return pb.Subject(identity=subject.identity)
    if subject.api_key_sha256 is not None:
        return pb.Subject(api_key_sha256=subject.api_key_sha256)
    if subject.tier is not None:
        return pb.Subject(tier=subject.tier)
    entries = [
        pb.Entry(key=key) if value is None else pb.Entry(key=key, value=value)
        for key, value in subject.descriptor
    ]
    descriptor = pb.DescriptorSubject(domain=subject.domain or "", entries=entries)
    return pb.Subject(descriptor=descriptor)


def mode_of(value: int) -> BypassMode:
    mode = _MODE_OF_PROTO.get(value)
    if mode is None:
        raise InvalidRequest("mode: BYPASS_MODE_FULL or BYPASS_MODE_PARTIAL")
    return mode


def grant_proto(record: GrantRecord, file: str, now: float) -> pb.BypassGrant:
    grant = pb.BypassGrant(
        id=record.id,
        subject=subject_proto(record.subject),
        mode=_PROTO_MODE[record.mode],
        factor=record.factor or 0.0,
        reason=record.reason,
        actor=record.actor,
        expires_at=timestamp(record.expires_at),
        requires_approval=record.requires_approval,
        approved_by=record.approved_by or "",
        state=_PROTO_STATE[record.state(now)],
        file=file,
    )
    if record.starts_at is not None:
        grant.starts_at.CopyFrom(timestamp(record.starts_at))
    return grant


def problem_proto(problem: Problem) -> pb.Problem:
    return pb.Problem(file=problem.file, line=problem.line, message=problem.message)


def version_proto(version: Version) -> pb.Version:
    return pb.Version(
        number=version.number,
        created_at=timestamp(version.created_at),
        actor=version.actor,
        action=version.action,
        files=version.files,
        digest=version.digest,
        restored=version.restored or 0,
    )


def audit_proto(record: AuditRecord) -> pb.AuditRecord:
    return pb.AuditRecord(
        time=timestamp(record.time),
        actor=record.actor,
        peer=record.peer,
        principal=record.principal,
        method=record.method,
        target=record.target,
        outcome=record.outcome,
        before=json.dumps(record.before, sort_keys=True),
        after=json.dumps(record.after, sort_keys=True),
    )
