"""Where the admin API listens, how callers prove who they are, where it audits."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ADMIN_LISTEN = "127.0.0.1:8082"
AUDIT_FILE = "audit.jsonl"


def listen_host(listen: str, flag: str) -> str:
    """The host of ``HOST:PORT`` (``[::1]:PORT`` for IPv6); raises ``ValueError``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag} must be HOST:PORT, got {listen!r}")

    return host.strip("[]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_audit_path(config: Path) -> Path:
    """``audit.jsonl`` beside the config directory (outside what is watched)."""
    config = Path(os.path.abspath(config))
    directory = config if config.is_dir() else config.parent

    return directory.parent / AUDIT_FILE


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin listener; ``listen`` of ``None`` means no admin API.

    Without a token file the admin port must be on loopback, unless client
    certificates are required (``tls_client_ca``): then the certificate is
    the credential.
    """

    listen: str | None = None
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    audit_log: Path | None = None

    def __post_init__(self) -> None:
        if self.listen is None:
            return
        host = listen_host(self.listen, "--admin-listen")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--admin-tls-cert and --admin-tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "--admin-tls-client-ca needs --admin-tls-cert and --admin-tls-key"
            )
        unauthenticated = self.token_file is None and self.tls_client_ca is None
        if unauthenticated and not is_loopback(host):
            raise ValueError(
                f"--admin-listen {self.listen} is not a loopback address: "
                "--admin-token-file (or --admin-tls-client-ca) is required"
            )

    def audit_path(self, config: Path) -> Path:
        return self.audit_log or default_audit_path(config)
