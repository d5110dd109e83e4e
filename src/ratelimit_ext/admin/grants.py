"""Bypass grants and limit overrides as the YAML files the loader reads.

Both live in the config directory as ``bypass_grants:`` lists:
``generated/bypass.yaml`` holds the grants (``full`` lifts the limits,
``partial`` multiplies them by ``factor``), and ``generated/overrides.yaml``
holds limit overrides, which are partial grants (``ov-`` ids, one per
subject) whose factor may also be below 1. Keeping overrides in the same
shape means one parser, one engine path, one expiry mechanism.

This module turns records into that YAML (always the same layout, one key
per line, times in UTC as ``2026-12-03T10:00:00Z``) and reads our own files
back. It knows nothing of gRPC or of the directory.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import yaml

from ratelimit_ext.admin.errors import Conflict, InvalidRequest
from ratelimit_ext.policy.model import BypassMode, BypassSubject

BYPASS_FILE = "generated/bypass.yaml"
OVERRIDES_FILE = "generated/overrides.yaml"
GRANT_PREFIX = "g"
OVERRIDE_PREFIX = "ov"

_HEADER = (
    "# Written by ratelimit-ext (admin API / control plane): every change is\n"
    "# validated, written atomically and kept in generated/.history/.\n"
)
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@/+-]*")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class GrantState(enum.Enum):
    PENDING_APPROVAL = "pending_approval"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """One entry of a ``bypass_grants:`` list. Times are Unix seconds."""

    id: str
    subject: BypassSubject
    mode: BypassMode
    reason: str
    actor: str
    expires_at: float
    starts_at: float | None = None
    factor: float | None = None
    requires_approval: bool = False
    approved_by: str | None = None

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.id):
            raise InvalidRequest(
                f"id {self.id!r}: 1-64 letters, digits, '.', '_' or '-'"
            )
        check_subject(self.subject)
        if self.mode is BypassMode.PARTIAL:
            factor = self.factor
            if factor is None or not math.isfinite(factor) or factor <= 0:
                raise InvalidRequest("factor: a partial grant needs a factor > 0")
        elif self.factor is not None:
            raise InvalidRequest("factor: only a partial grant has a factor")
        if not self.reason.strip():
            raise InvalidRequest("reason: required")
        if not self.actor.strip():
            raise InvalidRequest("actor: required")
        if self.starts_at is not None and self.expires_at <= self.starts_at:
            raise InvalidRequest("expires_at: must be after starts_at")

    def state(self, now: float) -> GrantState:
        if self.expires_at <= now:
            return GrantState.EXPIRED
        if self.requires_approval and self.approved_by is None:
            return GrantState.PENDING_APPROVAL
        if self.starts_at is not None and now < self.starts_at:
            return GrantState.SCHEDULED
        return GrantState.ACTIVE

    def as_json(self) -> dict[str, Any]:
        """The record as the YAML has it (for audit records and ``--json``)."""
        record: dict[str, Any] = {
            "id": self.id,
            "subject": _subject_json(self.subject),
            "mode": self.mode.value,
        }
        if self.factor is not None:
            record["factor"] = self.factor
        record.update(reason=self.reason, actor=self.actor)
        if self.starts_at is not None:
            record["starts_at"] = format_time(self.starts_at)
        record.update(
            expires_at=format_time(self.expires_at),
            requires_approval=self.requires_approval,
            approved_by=self.approved_by,
        )
        return record


def check_subject(subject: BypassSubject) -> None:
    kinds = [
        subject.identity is not None,
        subject.api_key_sha256 is not None,
        subject.tier is not None,
        subject.domain is not None,
    ]
    if sum(kinds) != 1:
        raise InvalidRequest(
            "subject: exactly one of identity, api_key_sha256, tier or domain"
        )
    if subject.api_key_sha256 is not None and not re.fullmatch(
        r"[0-9a-f]{64}", subject.api_key_sha256
    ):
        raise InvalidRequest("subject.api_key_sha256: 64 lowercase hex digits")
    if subject.domain is not None and not subject.descriptor:
        raise InvalidRequest("subject.descriptor: a domain needs descriptor entries")
    if subject.domain is None and subject.descriptor:
        raise InvalidRequest("subject.descriptor: needs a domain")
    for key, value in subject.descriptor:
        if not key or value == "":
            raise InvalidRequest("subject.descriptor: entries need a key (and a value)")
    for text in (subject.identity, subject.tier, subject.domain):
        if text is not None and not text.strip():
            raise InvalidRequest("subject: empty name")


def describe_subject(subject: BypassSubject) -> str:
    """``identity=alice``, ``tier=pro``, ``api:key=value,path=*`` for humans."""
    if subject.identity is not None:
        return f"identity={subject.identity}"
    if subject.api_key_sha256 is not None:
        return f"api_key_sha256={subject.api_key_sha256[:12]}..."
    if subject.tier is not None:
        return f"tier={subject.tier}"
    entries = ",".join(f"{k}={'*' if v is None else v}" for k, v in subject.descriptor)
    return f"{subject.domain}:{entries}"


# --- time ------------------------------------------------------------------------


def format_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, field: str) -> float:
    """ISO 8601 text (``Z`` or an offset; UTC when none) or a YAML timestamp."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidRequest(f"{field}: not an ISO 8601 time: {value!r}") from None
    else:
        raise InvalidRequest(f"{field}: not a time: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    return moment.timestamp()


# --- YAML out --------------------------------------------------------------------


def render_grants(records: Iterable[GrantRecord]) -> bytes:
    """The ``bypass_grants:`` file of ``records``, in the documented layout."""
    lines = [_HEADER.rstrip("\n")]
    items = [_render_record(record) for record in records]
    if not items:
        lines.append("bypass_grants: []")
    else:
        lines.append("bypass_grants:")
        lines.extend(line for item in items for line in item)

    return ("\n".join(lines) + "\n").encode()


def _render_record(record: GrantRecord) -> list[str]:
    fields = [
        f"id: {_scalar(record.id)}",
        f"subject: {_render_subject(record.subject)}",
        f"mode: {record.mode.value}",
    ]
    if record.factor is not None:
        fields.append(f"factor: {_number(record.factor)}")
    fields += [
        f"reason: {json.dumps(record.reason)}",
        f"actor: {_scalar(record.actor)}",
    ]
    if record.starts_at is not None:
        fields.append(f"starts_at: {format_time(record.starts_at)}")
    fields += [
        f"expires_at: {format_time(record.expires_at)}",
        f"requires_approval: {'true' if record.requires_approval else 'false'}",
        f"approved_by: {_optional(record.approved_by)}",
    ]
    return [f"  - {fields[0]}", *(f"    {field}" for field in fields[1:])]


def _render_subject(subject: BypassSubject) -> str:
    if subject.identity is not None:
        return f"{{identity: {_scalar(subject.identity)}}}"
    if subject.api_key_sha256 is not None:
        return f"{{api_key_sha256: {subject.api_key_sha256}}}"
    if subject.tier is not None:
        return f"{{tier: {_scalar(subject.tier)}}}"
    entries = ", ".join(_render_entry(key, value) for key, value in subject.descriptor)
    return f"{{domain: {_scalar(subject.domain or '')}, descriptor: [{entries}]}}"


def _render_entry(key: str, value: str | None) -> str:
    if value is None:
        return f"{{key: {_scalar(key)}}}"
    return f"{{key: {_scalar(key)}, value: {_scalar(value)}}}"


def _scalar(text: str) -> str:
    """Plain when YAML reads it back as the same string, else double-quoted."""
    if _PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)


def _optional(text: str | None) -> str:
    return "null" if text is None else _scalar(text)


def _number(value: float) -> str:
    if value.is_integer():
        return str(int(value))
    text = repr(value)
    return text if "e" not in text else f"{value:.12f}".rstrip("0")


def _subject_json(subject: BypassSubject) -> dict[str, Any]:
    if subject.identity is not None:
        return {"identity": subject.identity}
    if subject.api_key_sha256 is not None:
        return {"api_key_sha256": subject.api_key_sha256}
    if subject.tier is not None:
        return {"tier": subject.tier}
    entries = [
        {"key": key} if value is None else {"key": key, "value": value}
        for key, value in subject.descriptor
    ]
    return {"domain": subject.domain, "descriptor": entries}


# --- YAML in ---------------------------------------------------------------------


def parse_grants(data: bytes | None, file: str) -> list[GrantRecord]:
    """The records of one of our files (``None``: no file, no records)."""
    if data is None:
        return []
    try:
        document = yaml.safe_load(data)
        items = document.get("bypass_grants") or [] if document else []
        return [_record(item) for item in items]
    except (yaml.YAMLError, AttributeError, TypeError, KeyError, InvalidRequest) as exc:
        raise Conflict(f"{file}: cannot read its grants: {exc}") from exc


def _record(item: Mapping[str, Any]) -> GrantRecord:
    factor = item.get("factor")
    starts = item.get("starts_at")
    approved = item.get("approved_by")
    return GrantRecord(
        id=str(item["id"]),
        subject=subject_from_json(item["subject"]),
        mode=BypassMode(item["mode"]),
        reason=str(item["reason"]),
        actor=str(item["actor"]),
        expires_at=parse_time(item["expires_at"], "expires_at"),
        starts_at=None if starts is None else parse_time(starts, "starts_at"),
        factor=None if factor is None else float(factor),
        requires_approval=bool(item.get("requires_approval", False)),
        approved_by=None if approved is None else str(approved),
    )


def subject_from_json(subject: Mapping[str, Any]) -> BypassSubject:
    if "domain" in subject:
        entries = tuple(_entry(entry) for entry in subject.get("descriptor") or ())
        return BypassSubject(domain=str(subject["domain"]), descriptor=entries)
    found = BypassSubject(
        identity=_text(subject.get("identity")),
        api_key_sha256=_text(subject.get("api_key_sha256")),
        tier=_text(subject.get("tier")),
    )
    check_subject(found)
    return found


def _entry(entry: Mapping[str, Any]) -> tuple[str, str | None]:
    value = entry.get("value")
    return str(entry["key"]), None if value is None else str(value)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


# --- ids -------------------------------------------------------------------------


def next_id(prefix: str, year: int, taken: Sequence[GrantRecord]) -> str:
    """``<prefix>-<year>-<NNN>``, one more than the highest of that year."""
    pattern = re.compile(rf"{re.escape(prefix)}-{year}-(\d+)")
    numbers = [int(m.group(1)) for r in taken if (m := pattern.fullmatch(r.id))]

    return f"{prefix}-{year}-{max(numbers, default=0) + 1:03d}"
