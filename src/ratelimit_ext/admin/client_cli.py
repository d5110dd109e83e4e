"""``ratelimit-ext admin <command>``: every admin call from a shell.

Human-readable output by default; ``--json`` prints the reply message as JSON
(field names as in the proto) for scripts. A refused call prints its gRPC
status and message on stderr (with ``--json``: ``{"error": ...}`` on stdout)
and exits 1; an invalid policy from ``validate`` exits 1 too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.admin.client import AdminClient, ClientTls
from ratelimit_ext.admin.settings import DEFAULT_ADMIN_LISTEN

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MODES = {pb.BYPASS_MODE_FULL: "full", pb.BYPASS_MODE_PARTIAL: "partial"}

Command = Callable[[AdminClient, argparse.Namespace], Message]
Printer = Callable[[Any], str]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = _common_options(suppress=True)
    admin = commands.add_parser(
        "admin",
        help="call a server's (or the control plane's) admin API",
        parents=[_common_options(suppress=False)],
    )
    calls = admin.add_subparsers(dest="admin_command", required=True)
    for name, help_text, options, command, printer in _COMMANDS:
        sub = calls.add_parser(name, help=help_text, parents=[common])
        options(sub)
        sub.set_defaults(admin_call=command, admin_print=printer)


def run(args: argparse.Namespace) -> int:
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ClientTls(_path(args.tls_ca), _path(args.tls_cert), _path(args.tls_key))
    try:
        client = AdminClient(
            args.server,
            token_file=_path(args.token_file),
            actor=args.actor,
            tls=tls,
            timeout=args.timeout,
        )
    except OSError as exc:
        print(f"admin: cannot read the token file: {exc.strerror}", file=sys.stderr)
        return 2
    with client:
        try:
            reply = args.admin_call(client, args)
        except grpc.RpcError as exc:
            return _refused(args, exc)
        except (OSError, ValueError) as exc:
            print(f"admin {args.admin_command}: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(_as_dict(reply), indent=2, sort_keys=True))
    else:
        print(args.admin_print(reply))
    invalid = isinstance(reply, pb.ValidatePolicyResponse) and not reply.valid
    return 1 if invalid else 0


# --- options -------------------------------------------------------------------


def _common_options(*, suppress: bool) -> argparse.ArgumentParser:
    """Accepted before and after the command; after wins."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    env = os.environ.get
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--server",
        default=default(env("RATELIMIT_EXT_ADMIN_SERVER", DEFAULT_ADMIN_LISTEN)),
        help="admin HOST:PORT [env RATELIMIT_EXT_ADMIN_SERVER]",
    )
    options.add_argument(
        "--token-file",
        default=default(env("RATELIMIT_EXT_ADMIN_TOKEN_FILE")),
        help="file holding the bearer token [env RATELIMIT_EXT_ADMIN_TOKEN_FILE]",
    )
    options.add_argument(
        "--actor",
        default=default(env("RATELIMIT_EXT_ADMIN_ACTOR") or env("USER", "")),
        help="who is asking, for the audit log [env RATELIMIT_EXT_ADMIN_ACTOR]",
    )
    options.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the reply as JSON",
    )
    options.add_argument("--timeout", type=float, default=default(10.0))
    options.add_argument("--tls-ca", default=default(None), help="server CA (TLS)")
    options.add_argument("--tls-cert", default=default(None), help="client cert")
    options.add_argument("--tls-key", default=default(None), help="client key")
    return options


def _no_options(parser: argparse.ArgumentParser) -> None:
    return None


def _subject_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--identity")
    group.add_argument("--api-key-sha256", help="see 'ratelimit-ext hash-key'")
    group.add_argument("--tier")
    group.add_argument("--domain", help="a descriptor of this domain (--entry)")
    parser.add_argument(
        "--entry",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="a descriptor entry (repeat); KEY alone matches any value",
    )


def _until_options(parser: argparse.ArgumentParser) -> None:
    until = parser.add_mutually_exclusive_group(required=True)
    until.add_argument("--for", dest="duration", help="e.g. 30m, 2h, 1d")
    until.add_argument("--until", help="e.g. 2026-12-04T10:00:00Z")
    parser.add_argument("--reason", required=True)


def _validate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--as", dest="name", help="the name of a single file")
    parser.add_argument("--standalone", action="store_true", help="these files alone")


def _apply_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--as", dest="name", help="the name of a single file")
    parser.add_argument("--delete", action="append", default=[], metavar="NAME")
    parser.add_argument("--expected-digest", default="")


def _grant_options(parser: argparse.ArgumentParser) -> None:
    _subject_options(parser, required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="no limit at all")
    mode.add_argument("--factor", type=float, help="partial: the limit times this")
    _until_options(parser)
    parser.add_argument("--starts", help="default now")
    parser.add_argument("--requires-approval", action="store_true")
    parser.add_argument("--id", default="")


def _id_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id")


def _set_override_options(parser: argparse.ArgumentParser) -> None:
    _subject_options(parser, required=True)
    parser.add_argument("--factor", type=float, required=True)
    _until_options(parser)


def _clear_override_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", default="")
    _subject_options(parser, required=False)


def _counter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", required=True)
    parser.add_argument("--entry", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--identity", default="")


def _audit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20)


def _rollback_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to", type=int, default=0, help="a version (default: the one before)"
    )


# --- calls ---------------------------------------------------------------------


def _info(client: AdminClient, args: argparse.Namespace) -> Message:
    return client.call(
        "GetServerInfo", pb.GetServerInfoRequest(), pb.GetServerInfoResponse
    )


def _policy(client: AdminClient, args: argparse.Namespace) -> Message:
    return client.call("GetPolicy", pb.GetPolicyRequest(), pb.GetPolicyResponse)


def _validate(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.ValidatePolicyRequest(
        files=_policy_files(args.files, args.name), standalone=args.standalone
    )
    return client.call("ValidatePolicy", request, pb.ValidatePolicyResponse)


def _apply(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.ApplyPolicyRequest(
        files=_policy_files(args.files, args.name),
        delete=args.delete,
        actor=args.actor,
        expected_digest=args.expected_digest,
    )
    return client.call("ApplyPolicy", request, pb.ApplyPolicyResponse)


def _grants(client: AdminClient, args: argparse.Namespace) -> Message:
    return client.call(
        "ListBypassGrants", pb.ListBypassGrantsRequest(), pb.ListBypassGrantsResponse
    )


def _grant(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.GrantBypassRequest(
        subject=_subject(args),
        mode=pb.BYPASS_MODE_FULL if args.full else pb.BYPASS_MODE_PARTIAL,
        factor=args.factor or 0.0,
        reason=args.reason,
        expires_at=_expiry(args),
        requires_approval=args.requires_approval,
        id=args.id,
        actor=args.actor,
    )
    if args.starts:
        request.starts_at.FromDatetime(_datetime(args.starts))
    return client.call("GrantBypass", request, pb.BypassGrantChange)


def _approve(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.ApproveBypassRequest(id=args.id, actor=args.actor)
    return client.call("ApproveBypass", request, pb.BypassGrantChange)


def _revoke(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.RevokeBypassRequest(id=args.id, actor=args.actor)
    return client.call("RevokeBypass", request, pb.BypassGrantChange)


def _set_override(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.SetOverrideRequest(
        subject=_subject(args),
        factor=args.factor,
        expires_at=_expiry(args),
        reason=args.reason,
        actor=args.actor,
    )
    return client.call("SetOverride", request, pb.BypassGrantChange)


def _clear_override(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.ClearOverrideRequest(id=args.id, actor=args.actor)
    if not args.id:
        request.subject.CopyFrom(_subject(args))
    return client.call("ClearOverride", request, pb.BypassGrantChange)


def _usage(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.GetUsageRequest(
        domain=args.domain, entries=_entries(args.entry), identity=args.identity
    )
    return client.call("GetUsage", request, pb.GetUsageResponse)


def _reset(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.ResetCountersRequest(
        domain=args.domain,
        entries=_entries(args.entry),
        identity=args.identity,
        actor=args.actor,
    )
    return client.call("ResetCounters", request, pb.ResetCountersResponse)


def _audit(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.ListAuditRequest(limit=args.limit)
    return client.call("ListAudit", request, pb.ListAuditResponse)


def _versions(client: AdminClient, args: argparse.Namespace) -> Message:
    return client.call(
        "ListVersions", pb.ListVersionsRequest(), pb.ListVersionsResponse
    )


def _rollback(client: AdminClient, args: argparse.Namespace) -> Message:
    request = pb.RollbackRequest(to=args.to, actor=args.actor)
    return client.call("Rollback", request, pb.RollbackResponse)


# --- request parts ----------------------------------------------------------------


def _policy_files(paths: Sequence[Path], name: str | None) -> list[pb.PolicyFile]:
    if name and len(paths) != 1:
        raise ValueError("--as names a single file")
    return [
        pb.PolicyFile(name=name or path.name, content=path.read_text())
        for path in paths
    ]


def _subject(args: argparse.Namespace) -> pb.Subject:
    if args.identity:
        return pb.Subject(identity=args.identity)
    if args.api_key_sha256:
        return pb.Subject(api_key_sha256=args.api_key_sha256)
    if args.tier:
        return pb.Subject(tier=args.tier)
    if args.domain:
        entries = _entries(args.entry, any_value=True)
        return pb.Subject(
            descriptor=pb.DescriptorSubject(domain=args.domain, entries=entries)
        )
    raise ValueError("give --identity, --api-key-sha256, --tier or --domain")


def _entries(texts: Sequence[str], *, any_value: bool = False) -> list[pb.Entry]:
    entries = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep and not any_value:
            raise ValueError(f"--entry {text!r}: KEY=VALUE")
        entries.append(pb.Entry(key=key, value=value) if sep else pb.Entry(key=key))
    return entries


def _expiry(args: argparse.Namespace) -> Timestamp:
    stamp = Timestamp()
    if args.until:
        stamp.FromDatetime(_datetime(args.until))
    else:
        stamp.FromSeconds(int(time.time() + _seconds(args.duration)))
    return stamp


def _datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seconds(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--for {text!r}: a number and s, m, h or d (e.g. 2h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


# --- output ----------------------------------------------------------------------


def _as_dict(message: Message) -> dict[str, Any]:
    found: dict[str, Any] = MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return found


def _refused(args: argparse.Namespace, exc: grpc.RpcError) -> int:
    code = exc.code()
    details = exc.details()
    name = code.name if code is not None else "UNKNOWN"
    if args.json:
        print(json.dumps({"error": {"code": name, "message": details}}, indent=2))
    else:
        print(f"admin {args.admin_command}: {name}: {details}", file=sys.stderr)
    return 1


def _when(stamp: Any) -> str:
    if not stamp.seconds:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp.seconds))


def _show_info(info: pb.GetServerInfoResponse) -> str:
    lines = [
        f"ratelimit-ext {info.version} ({info.role}), config {info.config}",
        f"started {_when(info.started_at)}",
    ]
    if info.role == "server":
        breaker = f", breaker {info.store_breaker}" if info.store_breaker else ""
        health = "healthy" if info.store_healthy else "FAILING"
        lines.append(f"store {info.store}: {health}{breaker}")
        lines.append(_show_reloader(info.reloader))
    return "\n".join(lines)


def _show_reloader(status: pb.ReloaderStatus) -> str:
    watching = "watching" if status.watching else "not watching"
    text = (
        f"policy {status.digest[:12]} since {_when(status.loaded_at)} ({watching}, "
        f"{status.reloads} reloads, {status.rejections} rejected)"
    )
    if status.rejected_digest:
        text += f"\nrejected on disk: {status.rejected_digest[:12]}"
        text += "".join(f"\n  {problem}" for problem in status.problems)
    return text


def _show_policy(policy: pb.GetPolicyResponse) -> str:
    lines = [
        f"digest {policy.digest or '-'} (loaded {_when(policy.loaded_at)})",
        f"domains: {', '.join(policy.domains) or '-'}",
        f"{policy.api_keys} API keys, {policy.bypass_grants} bypass grants",
        "files:",
        *(f"  {name}" for name in policy.files),
    ]
    if policy.rejected_digest:
        lines.append(f"rejected on disk: {policy.rejected_digest[:12]}")
        lines.extend(f"  {problem}" for problem in policy.rejected_problems)
    return "\n".join(lines)


def _show_validation(result: pb.ValidatePolicyResponse) -> str:
    if result.valid:
        return f"valid: digest {result.digest[:12]}"
    return "\n".join(f"{p.file}:{p.line}: {p.message}" for p in result.problems)


def _show_applied(result: pb.ApplyPolicyResponse) -> str:
    state = "in force" if result.in_force else "written (not yet in force here)"
    version = f", generated/ version {result.version}" if result.version else ""
    return f"{result.previous_digest[:12]} -> {result.digest[:12]}: {state}{version}"


def _show_grants(reply: pb.ListBypassGrantsResponse) -> str:
    lines = ["grants:" if reply.grants else "grants: none"]
    lines += [f"  {_grant_line(g)}" for g in reply.grants]
    lines.append("overrides:" if reply.overrides else "overrides: none")
    lines += [f"  {_grant_line(g)}" for g in reply.overrides]
    return "\n".join(lines)


def _grant_line(grant: pb.BypassGrant) -> str:
    mode = _MODES.get(grant.mode, "?")
    if grant.mode == pb.BYPASS_MODE_PARTIAL:
        mode += f" x{grant.factor:g}"
    state = pb.GrantState.Name(grant.state).removeprefix("GRANT_STATE_").lower()
    approval = f", approved by {grant.approved_by}" if grant.approved_by else ""
    return (
        f"{grant.id}  {_subject_text(grant.subject)}  {mode}  {state}  "
        f"until {_when(grant.expires_at)}  by {grant.actor}{approval}: {grant.reason}"
    )


def _subject_text(subject: pb.Subject) -> str:
    kind = subject.WhichOneof("kind")
    if kind == "descriptor":
        entries = ",".join(
            f"{e.key}={e.value if e.HasField('value') else '*'}"
            for e in subject.descriptor.entries
        )
        return f"{subject.descriptor.domain}:{entries}"
    value = getattr(subject, kind) if kind else ""
    return f"{kind}={value}"


def _show_grant_change(change: pb.BypassGrantChange) -> str:
    state = "in force" if change.in_force else "written"
    return f"{_grant_line(change.grant)}\npolicy {change.digest[:12]}: {state}"


def _show_usage(usage: pb.GetUsageResponse) -> str:
    if not usage.limited:
        return f"{usage.code}: no limit applies"
    limit = usage.limit
    name = f" ({usage.name})" if usage.name else ""
    return (
        f"{usage.code}{name}: {usage.remaining} of {limit.requests_per_unit} per "
        f"{limit.unit} left ({limit.algorithm}), resets in {usage.reset_seconds:.1f}s"
    )


def _show_reset(reset: pb.ResetCountersResponse) -> str:
    return f"reset {reset.subjects} subjects ({reset.removed} counters removed)"


def _show_audit(reply: pb.ListAuditResponse) -> str:
    return (
        "\n".join(
            f"{_when(r.time)}  {r.actor}  {r.method} {r.target}: {r.outcome}"
            for r in reply.records
        )
        or "no audit records"
    )


def _show_versions(reply: pb.ListVersionsResponse) -> str:
    return (
        "\n".join(
            f"v{v.number}  {_when(v.created_at)}  {v.actor}  {v.action}  "
            f"[{', '.join(v.files) or 'no files'}]"
            for v in reply.versions
        )
        or "no versions yet"
    )


def _show_rollback(reply: pb.RollbackResponse) -> str:
    state = "in force" if reply.in_force else "written"
    version = reply.version
    return f"v{version.number}: {version.action} ({state}, policy {reply.digest[:12]})"


_COMMANDS: list[
    tuple[str, str, Callable[[argparse.ArgumentParser], None], Command, Printer]
] = [
    ("info", "version, store health, reload status", _no_options, _info, _show_info),
    ("policy", "the policy in force", _no_options, _policy, _show_policy),
    (
        "validate",
        "check files, change nothing",
        _validate_options,
        _validate,
        _show_validation,
    ),
    (
        "apply",
        "write (or --delete) policy files",
        _apply_options,
        _apply,
        _show_applied,
    ),
    ("grants", "list bypass grants and overrides", _no_options, _grants, _show_grants),
    ("grant", "grant a bypass", _grant_options, _grant, _show_grant_change),
    ("approve", "approve a requested grant", _id_options, _approve, _show_grant_change),
    ("revoke", "revoke a grant", _id_options, _revoke, _show_grant_change),
    (
        "set-override",
        "multiply a subject's limits",
        _set_override_options,
        _set_override,
        _show_grant_change,
    ),
    (
        "clear-override",
        "remove an override (by id or subject)",
        _clear_override_options,
        _clear_override,
        _show_grant_change,
    ),
    ("usage", "usage and remaining quota", _counter_options, _usage, _show_usage),
    ("reset", "reset counters", _counter_options, _reset, _show_reset),
    ("audit", "the newest audit records", _audit_options, _audit, _show_audit),
    ("versions", "versions of generated/", _no_options, _versions, _show_versions),
    (
        "rollback",
        "restore an earlier version of generated/",
        _rollback_options,
        _rollback,
        _show_rollback,
    ),
]
