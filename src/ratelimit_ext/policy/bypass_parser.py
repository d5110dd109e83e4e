"""Bypass files (top-level ``bypass_grants:`` and/or ``emergency_levels:``).

A grant exempts one subject (an identity, an API key digest, a tier, or a
domain's request descriptor) from its limits, fully or by a factor, between
``starts_at`` and ``expires_at``; an emergency level lets a stable share of
identities past every limit of a domain. Both say who asked (``actor``) and
why (``reason``), and both must expire. Times are RFC 3339 timestamps with a
timezone; a time without one is refused rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from yaml import Node, ScalarNode

from ratelimit_ext.policy.model import (
    BypassGrant,
    BypassMode,
    BypassSubject,
    EmergencyLevel,
    Source,
)
from ratelimit_ext.policy.yaml_nodes import (
    Reader,
    optional,
    optional_flag,
    required_name,
)

_FILE_FIELDS = ("bypass_grants", "emergency_levels")
_GRANT_FIELDS = (
    "id",
    "subject",
    "mode",
    "factor",
    "reason",
    "actor",
    "starts_at",
    "expires_at",
    "requires_approval",
    "approved_by",
)
_LEVEL_FIELDS = (
    "id",
    "percent",
    "reason",
    "actor",
    "starts_at",
    "expires_at",
    "domain",
)
_SUBJECT_FIELDS = ("identity", "api_key_sha256", "tier", "domain", "descriptor")
_SUBJECT_KINDS = {
    "identity": ("identity",),
    "api_key_sha256": ("api_key_sha256",),
    "tier": ("tier",),
    "domain with descriptor": ("domain", "descriptor"),
}
_DESCRIPTOR_KIND = "domain with descriptor"
_ENTRY_FIELDS = ("key", "value")

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_MODE_NAMES = ", ".join(mode.value for mode in BypassMode)
_TIME_EXAMPLE = "e.g. 2026-12-03T10:00:00Z"
ALWAYS_STARTED = 0.0
"""``starts_at`` of a grant that does not name one (Unix seconds)."""


@dataclass(frozen=True, slots=True)
class BypassFile:
    """What one bypass file holds."""

    grants: list[BypassGrant] = field(default_factory=list)
    levels: list[EmergencyLevel] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Record:
    """The fields grants and emergency levels share."""

    id: str
    reason: str
    actor: str
    starts_at: float
    expires_at: float
    source: Source


def parse_bypass_file(reader: Reader, root: Node) -> BypassFile:
    """Every valid grant and level of a bypass file; invalid ones are reported."""
    fields = reader.fields(root, "bypass file", _FILE_FIELDS)
    if fields is None:
        return BypassFile()
    grants = _items(reader, fields, "bypass_grants")
    levels = _items(reader, fields, "emergency_levels")
    parsed_grants = (_parse_grant(reader, item) for item in grants)
    parsed_levels = (_parse_level(reader, item) for item in levels)

    return BypassFile(
        grants=[grant for grant in parsed_grants if grant is not None],
        levels=[level for level in parsed_levels if level is not None],
    )


def _items(reader: Reader, fields: dict[str, Node], key: str) -> list[Node]:
    node = optional(fields, key)
    items = None if node is None else reader.sequence(node, key)

    return items or []


# --- grants --------------------------------------------------------------------


def _parse_grant(reader: Reader, node: Node) -> BypassGrant | None:
    fields = reader.fields(node, "bypass grant", _GRANT_FIELDS)
    if fields is None:
        return None
    record = _parse_record(reader, node, fields)
    subject = _parse_subject(reader, node, fields)
    mode = _parse_mode(reader, node, fields)
    factor = _parse_factor(reader, node, fields, mode)
    approval = _parse_approval(reader, fields)
    if record is None or subject is None or mode is None or factor is None:
        return None
    if approval is None:
        return None

    return BypassGrant(
        id=record.id,
        subject=subject,
        mode=mode,
        reason=record.reason,
        actor=record.actor,
        starts_at=record.starts_at,
        expires_at=record.expires_at,
        factor=factor,
        requires_approval=approval[0],
        approved_by=approval[1],
        source=record.source,
    )


def _parse_mode(
    reader: Reader, node: Node, fields: dict[str, Node]
) -> BypassMode | None:
    mode_node = reader.required(node, fields, "mode")
    text = None if mode_node is None else reader.name(mode_node, "mode")
    if mode_node is None or text is None:
        return None
    try:
        return BypassMode(text.strip())
    except ValueError:
        reader.report(mode_node, f"'mode' must be one of {_MODE_NAMES}, got {text!r}")
        return None


def _parse_factor(
    reader: Reader, node: Node, fields: dict[str, Node], mode: BypassMode | None
) -> float | None:
    """The partial factor (> 0); 1.0 for a full grant, which must not have one."""
    factor_node = optional(fields, "factor")
    if mode is BypassMode.FULL and factor_node is not None:
        reader.report(factor_node, "'factor' is only for mode partial, not full")
        return None
    if mode is BypassMode.PARTIAL and factor_node is None:
        reader.report(node, "mode partial needs 'factor' (a number > 0)")
        return None
    if factor_node is None:
        return 1.0
    factor = reader.number(factor_node, "factor")
    if factor is not None and factor <= 0:
        reader.report(factor_node, f"'factor' must be > 0, got {factor:g}")
        return None

    return factor


def _parse_approval(
    reader: Reader, fields: dict[str, Node]
) -> tuple[bool, str | None] | None:
    """``(requires_approval, approved_by)``; ``None`` if either is invalid."""
    requires = optional_flag(reader, fields, "requires_approval")
    approver_node = optional(fields, "approved_by")
    if approver_node is None:
        return requires, None
    approver = reader.name(approver_node, "approved_by")
    if approver is None:
        return None
    actor = _person(fields.get("actor"))
    if actor is not None and actor == _person(approver_node):
        reader.report(
            approver_node,
            "'approved_by' must differ from 'actor': nobody approves their own grant",
        )
        return None

    return requires, approver


def _person(node: Node | None) -> str | None:
    """A scalar's text, for comparing people (case and spaces ignored)."""
    if not isinstance(node, ScalarNode):
        return None
    return str(node.value).strip().casefold() or None


# --- subjects ------------------------------------------------------------------


def _parse_subject(
    reader: Reader, node: Node, fields: dict[str, Node]
) -> BypassSubject | None:
    subject_node = reader.required(node, fields, "subject")
    subject = (
        None
        if subject_node is None
        else reader.fields(subject_node, "subject", _SUBJECT_FIELDS)
    )
    if subject_node is None or subject is None:
        return None
    present = [
        (kind, next(subject[name] for name in names if name in subject))
        for kind, names in _SUBJECT_KINDS.items()
        if any(name in subject for name in names)
    ]
    if not present and len(subject_node.value) > 0:
        return None  # only unknown keys: already reported
    if len(present) != 1:
        given = ", ".join(kind for kind, _ in present) or "none"
        reader.report(
            present[1][1] if len(present) > 1 else subject_node,
            f"a subject needs exactly one of {', '.join(_SUBJECT_KINDS)} (got {given})",
        )
        return None

    return _subject_of_kind(reader, subject_node, subject, present[0][0])


def _subject_of_kind(
    reader: Reader, node: Node, subject: dict[str, Node], kind: str
) -> BypassSubject | None:
    if kind == "api_key_sha256":
        digest = _parse_digest(reader, subject[kind])
        return None if digest is None else BypassSubject(api_key_sha256=digest)
    if kind == _DESCRIPTOR_KIND:
        return _parse_descriptor_subject(reader, node, subject)
    name = reader.name(subject[kind], kind)
    if name is None:
        return None
    if kind == "tier":
        return BypassSubject(tier=name)

    return BypassSubject(identity=name)


def _parse_digest(reader: Reader, node: Node) -> str | None:
    text = reader.text(node, "api_key_sha256")
    if text is None:
        return None
    if not _SHA256_HEX.fullmatch(text.strip()):
        reader.report(
            node, "'api_key_sha256' must be a SHA-256 hex digest (64 hex characters)"
        )
        return None

    return text.strip().lower()


def _parse_descriptor_subject(
    reader: Reader, node: Node, subject: dict[str, Node]
) -> BypassSubject | None:
    domain = required_name(reader, node, subject, "domain")
    entries_node = reader.required(node, subject, "descriptor")
    items = (
        None if entries_node is None else reader.sequence(entries_node, "descriptor")
    )
    if entries_node is not None and items == []:
        reader.report(entries_node, "'descriptor' must list at least one entry")
        return None
    entries = [_parse_entry(reader, item) for item in items or ()]
    if domain is None or items is None or None in entries:
        return None

    return BypassSubject(
        domain=domain, descriptor=tuple(e for e in entries if e is not None)
    )


def _parse_entry(reader: Reader, node: Node) -> tuple[str, str | None] | None:
    """``{key, value?}``; a missing value matches any value of the key."""
    fields = reader.fields(node, "descriptor entry", _ENTRY_FIELDS)
    key = None if fields is None else required_name(reader, node, fields, "key")
    value_node = None if fields is None else optional(fields, "value")
    value = None if value_node is None else reader.text(value_node, "value")
    if key is None or (value_node is not None and value is None):
        return None

    return key, value


# --- emergency levels ----------------------------------------------------------


def _parse_level(reader: Reader, node: Node) -> EmergencyLevel | None:
    fields = reader.fields(node, "emergency level", _LEVEL_FIELDS)
    if fields is None:
        return None
    record = _parse_record(reader, node, fields)
    percent = _parse_percent(reader, node, fields)
    domain_node = optional(fields, "domain")
    domain = None if domain_node is None else reader.name(domain_node, "domain")
    if record is None or percent is None:
        return None
    if domain_node is not None and domain is None:
        return None

    return EmergencyLevel(
        id=record.id,
        percent=percent,
        reason=record.reason,
        actor=record.actor,
        starts_at=record.starts_at,
        expires_at=record.expires_at,
        domain=domain,
        source=record.source,
    )


def _parse_percent(reader: Reader, node: Node, fields: dict[str, Node]) -> float | None:
    percent_node = reader.required(node, fields, "percent")
    percent = None if percent_node is None else reader.number(percent_node, "percent")
    if percent_node is None or percent is None:
        return None
    if not 0 <= percent <= 100:
        reader.report(
            percent_node, f"'percent' must be between 0 and 100, got {percent:g}"
        )
        return None

    return percent


# --- what both share -----------------------------------------------------------


def _parse_record(
    reader: Reader, node: Node, fields: dict[str, Node]
) -> _Record | None:
    record_id = required_name(reader, node, fields, "id")
    reason = required_name(reader, node, fields, "reason")
    actor = required_name(reader, node, fields, "actor")
    period = _parse_period(reader, node, fields)
    if record_id is None or reason is None or actor is None or period is None:
        return None

    return _Record(
        id=record_id,
        reason=reason,
        actor=actor,
        starts_at=period[0],
        expires_at=period[1],
        source=reader.source(fields["id"]),
    )


def _parse_period(
    reader: Reader, node: Node, fields: dict[str, Node]
) -> tuple[float, float] | None:
    """``(starts_at, expires_at)``: every grant expires, later than it starts."""
    start_node = optional(fields, "starts_at")
    starts_at = (
        None if start_node is None else _parse_time(reader, start_node, "starts_at")
    )
    expiry_node = reader.required(node, fields, "expires_at")
    expires_at = (
        None if expiry_node is None else _parse_time(reader, expiry_node, "expires_at")
    )
    if expiry_node is None or expires_at is None:
        return None
    if start_node is None:
        return ALWAYS_STARTED, expires_at
    if starts_at is None:
        return None
    if expires_at <= starts_at:
        reader.report(expiry_node, "'expires_at' must be later than 'starts_at'")
        return None

    return starts_at, expires_at


def _parse_time(reader: Reader, node: Node, what: str) -> float | None:
    """An RFC 3339 timestamp with a timezone, as Unix seconds."""
    text = reader.text(node, what)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        reader.report(
            node,
            f"'{what}' must be an RFC 3339 timestamp ({_TIME_EXAMPLE}), got {text!r}",
        )
        return None
    if moment.tzinfo is None:
        reader.report(
            node,
            f"'{what}' has no timezone: add Z or an offset such as +02:00 "
            f"({_TIME_EXAMPLE})",
        )
        return None

    return moment.timestamp()
