"""The ``ratelimit-ext`` command line.

Every ``serve`` flag also reads an environment variable
(``RATELIMIT_EXT_<FLAG>``); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ratelimit_ext import __version__, eventloop
from ratelimit_ext.admin import client_cli as admin_cli
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.authn import AuthSettings
from ratelimit_ext.control_plane import cli as control_plane_cli
from ratelimit_ext.errors import PolicyError
from ratelimit_ext.eventloop import EVENT_LOOPS
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.model import FailurePolicy

ENV_PREFIX = "RATELIMIT_EXT_"
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_flag(name: str) -> bool:
    return (_env(name) or "").strip().lower() in TRUE_WORDS


def _env_switch(name: str, default: bool) -> bool:
    """An on/off variable: a TRUE_WORDS value, a FALSE_WORDS value, or unset."""
    value = (_env(name) or "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    return default


def _serve_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="serve RLS + ext_authz over gRPC")
    serve.add_argument(
        "--config",
        default=_env("CONFIG"),
        help="policy YAML file or directory [env RATELIMIT_EXT_CONFIG]",
    )
    serve.add_argument(
        "--listen",
        default=_env("LISTEN", "127.0.0.1:8081"),
        help="gRPC HOST:PORT (default %(default)s) [env RATELIMIT_EXT_LISTEN]",
    )
    serve.add_argument(
        "--store",
        default=_env("STORE", "memory"),
        help="memory | redis://[user:pass@]host:port[/db] [env RATELIMIT_EXT_STORE]",
    )
    serve.add_argument(
        "--metrics-listen",
        default=_env("METRICS_LISTEN", "127.0.0.1:9090"),
        help="Prometheus HOST:PORT, or 'none' [env RATELIMIT_EXT_METRICS_LISTEN]",
    )
    serve.add_argument(
        "--shadow-mode",
        action="store_true",
        default=_env_flag("SHADOW_MODE"),
        help="count, but never answer OVER_LIMIT [env RATELIMIT_EXT_SHADOW_MODE]",
    )
    serve.add_argument(
        "--ratelimit-headers",
        action="store_true",
        default=_env_flag("RATELIMIT_HEADERS"),
        help="add RateLimit-* response headers [env RATELIMIT_EXT_RATELIMIT_HEADERS]",
    )
    serve.add_argument(
        "--store-timeout",
        type=float,
        default=float(_env("STORE_TIMEOUT", "0.015") or 0.015),
        help="seconds a store call may take (default %(default)s)"
        " [env RATELIMIT_EXT_STORE_TIMEOUT]",
    )
    serve.add_argument(
        "--coalesce-window",
        default=_env("COALESCE_WINDOW", "0"),
        help="seconds concurrent store calls wait to share one round trip;"
        " 0 = the same event-loop turn, 'off' disables (default %(default)s)"
        " [env RATELIMIT_EXT_COALESCE_WINDOW]",
    )
    serve.add_argument(
        "--failure-policy",
        choices=[policy.value for policy in FailurePolicy],
        default=_env("FAILURE_POLICY", "unavailable"),
        help="when the store fails, for domains without their own"
        " failure_policy (default %(default)s) [env RATELIMIT_EXT_FAILURE_POLICY]",
    )
    serve.add_argument(
        "--all-or-nothing",
        action="store_true",
        default=_env_flag("ALL_OR_NOTHING"),
        help="a rejected request consumes none of its descriptors, for domains"
        " without their own all_or_nothing [env RATELIMIT_EXT_ALL_OR_NOTHING]",
    )
    serve.add_argument(
        "--replicas",
        type=int,
        default=int(_env("REPLICAS", "1") or 1),
        help="server replicas sharing the store; the 'local' failure policy"
        " enforces limit/replicas (default %(default)s) [env RATELIMIT_EXT_REPLICAS]",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(_env("WORKERS", "1") or 1),
        help="server processes sharing the --listen port (SO_REUSEPORT); above 1"
        " needs a Redis store (default %(default)s) [env RATELIMIT_EXT_WORKERS]",
    )
    serve.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=_env("EVENT_LOOP", "uvloop"),
        help="the event loop each server process runs on (default %(default)s)"
        " [env RATELIMIT_EXT_EVENT_LOOP]",
    )
    serve.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=_env_switch("WATCH", default=True),
        help="reload the policy when its files change (default on)"
        " [env RATELIMIT_EXT_WATCH]",
    )
    serve.add_argument("--api-key-header", default=_env("API_KEY_HEADER", "x-api-key"))
    serve.add_argument(
        "--identity-header", default=_env("IDENTITY_HEADER", "x-user-id")
    )
    serve.add_argument("--tier-header", default=_env("TIER_HEADER", "x-user-tier"))
    serve.add_argument(
        "--grace",
        type=float,
        default=float(_env("GRACE", "10") or 10),
        help="seconds in-flight calls get on shutdown (default %(default)s)",
    )
    _admin_flags(serve)
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    serve.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT", "text"),
        help="text, or json: one object a line with timestamp, level, logger,"
        " message and the request's domain and policy version"
        " (default %(default)s) [env RATELIMIT_EXT_LOG_FORMAT]",
    )


def _admin_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--admin-listen",
        default=_env("ADMIN_LISTEN", "127.0.0.1:8082"),
        help="admin API HOST:PORT, or 'none' (default %(default)s)"
        " [env RATELIMIT_EXT_ADMIN_LISTEN]",
    )
    serve.add_argument(
        "--admin-token-file",
        default=_env("ADMIN_TOKEN_FILE"),
        help="bearer token for the admin API; without it the admin port must be"
        " loopback [env RATELIMIT_EXT_ADMIN_TOKEN_FILE]",
    )
    for name in ("cert", "key", "client-ca"):
        env = "ADMIN_TLS_" + name.upper().replace("-", "_")
        serve.add_argument(
            f"--admin-tls-{name}",
            default=_env(env),
            help=f"admin API TLS {name} (PEM) [env RATELIMIT_EXT_{env}]",
        )
    serve.add_argument(
        "--audit-log",
        default=_env("AUDIT_LOG"),
        help="admin audit file (default: audit.jsonl beside the config directory)"
        " [env RATELIMIT_EXT_AUDIT_LOG]",
    )


def _admin_settings(args: argparse.Namespace) -> AdminSettings:
    def path(text: str | None) -> Path | None:
        return Path(text) if text else None

    listen = None if args.admin_listen.lower() == "none" else args.admin_listen
    return AdminSettings(
        listen=listen,
        token_file=path(args.admin_token_file),
        tls_cert=path(args.admin_tls_cert),
        tls_key=path(args.admin_tls_key),
        tls_client_ca=path(args.admin_tls_client_ca),
        audit_log=path(args.audit_log),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratelimit-ext",
        description="Rate limiting and authorization sidecar for Envoy.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_parser(commands)
    check = commands.add_parser("check-config", help="validate policy files")
    check.add_argument("path", help="policy YAML file or directory")
    hashing = commands.add_parser("hash-key", help="print the SHA-256 of an API key")
    hashing.add_argument(
        "key", nargs="?", help="the key (read from a prompt or stdin if omitted)"
    )
    admin_cli.add_parser(commands)
    control_plane_cli.add_parser(commands)
    return parser


def _check_config(path: str) -> int:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(
        f"ok: {len(policy.files)} files, {len(policy.domains)} domains, "
        f"{len(policy.api_keys)} API keys, digest {policy.digest[:12]}"
    )
    return 0


def _hash_key(key: str | None) -> int:
    if key is None:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.read()
    key = key.strip()
    if not key:
        print("hash-key: empty key", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _coalesce_window(text: str) -> float | None:
    if text.strip().lower() in {"off", "none", "false"}:
        return None
    return float(text)


def _serve(args: argparse.Namespace) -> int:
    from ratelimit_ext import logs
    from ratelimit_ext.counting import CountingSettings
    from ratelimit_ext.server import ServeSettings, serve
    from ratelimit_ext.store.guard import GuardSettings
    from ratelimit_ext.workers import supervise

    log_format = args.log_format.strip().lower()
    if log_format not in logs.FORMATS:
        choices = ", ".join(logs.FORMATS)
        print(f"serve: --log-format must be one of {choices}", file=sys.stderr)
        return 2
    logs.configure(log_format, args.log_level.upper())
    if not args.config:
        print("serve: --config (or RATELIMIT_EXT_CONFIG) is required", file=sys.stderr)
        return 2
    metrics = None if args.metrics_listen.lower() == "none" else args.metrics_listen
    try:
        settings = ServeSettings(
            config=Path(args.config),
            listen=args.listen,
            store=args.store,
            metrics_listen=metrics,
            shadow_mode=args.shadow_mode,
            ratelimit_headers=args.ratelimit_headers,
            grace_seconds=args.grace,
            watch=args.watch,
            counting=CountingSettings(
                failure_policy=FailurePolicy(args.failure_policy),
                replicas=args.replicas,
                all_or_nothing=args.all_or_nothing,
            ),
            guard=GuardSettings(timeout_seconds=args.store_timeout),
            coalesce_window=_coalesce_window(args.coalesce_window),
            auth=AuthSettings(
                api_key_header=args.api_key_header,
                identity_header=args.identity_header,
                tier_header=args.tier_header,
            ),
            workers=args.workers,
            event_loop=args.event_loop,
            admin=_admin_settings(args),
            log_format=log_format,
        )
        if settings.workers > 1:
            # The supervisor serves nothing; uvloop lacks process groups.
            asyncio.run(supervise(settings))
        else:
            eventloop.run(serve(settings), settings.event_loop)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "hash-key":
        return _hash_key(args.key)
    if args.command == "admin":
        return admin_cli.run(args)
    if args.command == "control-plane":
        return control_plane_cli.run(args)
    return _serve(args)
