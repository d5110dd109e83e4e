"""``ratelimit-ext control-plane``: run it, or act on its directory offline.

``control-plane --config-dir DIR [--publish-to HOST:PORT ...]`` runs the
process; ``control-plane history --config-dir DIR`` lists the versions of
``generated/`` and ``control-plane rollback --config-dir DIR [--to N]``
restores one (validated, atomic, audited), without a running process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ratelimit_ext.admin.audit import AuditLog, AuditRecord
from ratelimit_ext.admin.errors import AdminError
from ratelimit_ext.admin.settings import AdminSettings, default_audit_path
from ratelimit_ext.admin.writer import PolicyWriter
from ratelimit_ext.control_plane.process import (
    DEFAULT_LISTEN,
    ControlPlaneSettings,
    run_control_plane,
)
from ratelimit_ext.errors import PolicyError

_ENV = "RATELIMIT_EXT_CONTROL_PLANE_"


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    directory = _directory_option(suppress=True)
    parser = commands.add_parser(
        "control-plane",
        help="own generated/ policy files, publish them, roll them back",
        parents=[_directory_option(suppress=False)],
    )
    _run_options(parser)
    actions = parser.add_subparsers(dest="control_plane_action")
    history = actions.add_parser(
        "history", help="list versions of generated/", parents=[directory]
    )
    history.add_argument("--json", action="store_true")
    rollback = actions.add_parser(
        "rollback", help="restore a version of generated/", parents=[directory]
    )
    rollback.add_argument("--to", type=int, default=0, help="default: the one before")
    rollback.add_argument("--actor", default=os.environ.get("USER", "control-plane"))
    rollback.add_argument("--audit-log", type=Path)


def run(args: argparse.Namespace) -> int:
    if not args.config_dir:
        print("control-plane: --config-dir is required", file=sys.stderr)
        return 2
    config_dir = Path(args.config_dir)
    if args.control_plane_action == "history":
        return _history(config_dir, args.json)
    if args.control_plane_action == "rollback":
        return _rollback(config_dir, args)
    return _serve(config_dir, args)


def _directory_option(*, suppress: bool) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else os.environ.get(_ENV + "CONFIG_DIR")
    options.add_argument(
        "--config-dir",
        default=default,
        help=f"the watched config directory [env {_ENV}CONFIG_DIR]",
    )
    return options


def _run_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--listen",
        default=env(_ENV + "LISTEN", DEFAULT_LISTEN),
        help="admin API HOST:PORT, or 'none' (default %(default)s)",
    )
    parser.add_argument("--token-file", default=env(_ENV + "TOKEN_FILE"))
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    parser.add_argument("--audit-log")
    parser.add_argument(
        "--publish-to",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="push generated/ to this server's admin API (repeat)",
    )
    parser.add_argument(
        "--publish-token-file",
        default=env("RATELIMIT_EXT_ADMIN_TOKEN_FILE"),
        help="the servers' admin token [env RATELIMIT_EXT_ADMIN_TOKEN_FILE]",
    )
    parser.add_argument("--sweep-interval", type=float, default=60.0)
    parser.add_argument("--sync-interval", type=float, default=5.0)
    parser.add_argument("--log-level", default=env("RATELIMIT_EXT_LOG_LEVEL", "INFO"))


def _serve(config_dir: Path, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    listen = None if args.listen.lower() == "none" else args.listen
    try:
        settings = ControlPlaneSettings(
            config_dir=config_dir,
            admin=AdminSettings(
                listen=listen,
                token_file=_path(args.token_file),
                tls_cert=_path(args.tls_cert),
                tls_key=_path(args.tls_key),
                tls_client_ca=_path(args.tls_client_ca),
                audit_log=_path(args.audit_log),
            ),
            publish_to=tuple(args.publish_to),
            publish_token_file=_path(args.publish_token_file),
            sweep_seconds=args.sweep_interval,
            sync_seconds=args.sync_interval,
        )
        asyncio.run(run_control_plane(settings))
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"control-plane: {exc}", file=sys.stderr)
        return 2
    return 0


def _history(config_dir: Path, as_json: bool) -> int:
    versions = PolicyWriter.for_directory(config_dir).history.versions()
    if as_json:
        print(json.dumps([asdict(v) for v in versions], indent=2))
        return 0
    for v in versions:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.created_at))
        files = ", ".join(v.files) or "no files"
        print(f"v{v.number}  {when}  {v.actor}  {v.action}  [{files}]")
    return 0


def _rollback(config_dir: Path, args: argparse.Namespace) -> int:
    writer = PolicyWriter.for_directory(config_dir)
    audit = AuditLog(args.audit_log or default_audit_path(config_dir))
    record = AuditRecord(
        time.time(), args.actor, "local", "", "Rollback", "generated", "ok"
    )
    try:
        change = writer.rollback(args.to, args.actor)
    except (AdminError, OSError) as exc:
        audit.append(_failed(record, exc))
        print(f"control-plane rollback: {exc}", file=sys.stderr)
        return 1
    audit.append(
        AuditRecord(
            **{**asdict(record), "before": change.before, "after": change.after}
        )
    )
    version = change.version
    number = version.number if version else 0
    print(
        f"v{number}: {version.action if version else ''}, policy {change.digest[:12]}"
    )
    return 0


def _failed(record: AuditRecord, exc: Exception) -> AuditRecord:
    outcome = exc.status if isinstance(exc, AdminError) else "FAILED_PRECONDITION"
    return AuditRecord(**{**asdict(record), "outcome": outcome, "after": str(exc)})


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None
