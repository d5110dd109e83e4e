"""Who may call the admin API: a bearer token from a file, and optional mTLS.

The token file is typically a mounted Kubernetes Secret. It is read again
whenever its identity or modification time changes (a Secret update swaps a
symlink), so a rotated token works without a restart. The presented token is
compared with ``hmac.compare_digest``. A missing or wrong token ends the call
with ``UNAUTHENTICATED`` before any admin code runs, and the attempt is
logged with the method and the peer, never with the token.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from ratelimit_ext.admin.settings import AdminSettings

logger = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int]


class TokenFile:
    """The admin token, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: _Stamp | None = None
        self._token: bytes | None = None
        self._trouble: str | None = None

    def load(self) -> None:
        """Read the file now; ``ValueError`` if it is unreadable or empty."""
        if self.current() is None:
            raise ValueError(f"--admin-token-file {self.path}: {self._trouble}")

    def current(self) -> bytes | None:
        """The token, or ``None`` if the file is unreadable or empty."""
        with self._lock:
            try:
                stat = os.stat(self.path)
                stamp = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp:
                    self._token = self.path.read_bytes().strip() or None
                    self._stamp = stamp
                    self._note(None if self._token else "the file is empty")
            except OSError as exc:
                self._token, self._stamp = None, None
                self._note(f"cannot read: {exc.strerror}")
            return self._token

    def matches(self, presented: str | None) -> bool:
        token = self.current()
        if token is None or presented is None:
            return False
        return hmac.compare_digest(presented.encode(), token)

    def _note(self, trouble: str | None) -> None:
        """Log when the file turns unusable or usable again, not on every call."""
        if trouble == self._trouble:
            return
        if trouble is None:
            logger.info("admin token read from %s", self.path)
        else:
            logger.warning(
                "admin token file %s: %s; every admin call is refused",
                self.path,
                trouble,
            )
        self._trouble = trouble


def bearer(metadata: object) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with the current token."""

    def __init__(self, tokens: TokenFile) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        presented = bearer(details.invocation_metadata)
        if self._tokens.matches(presented):
            return await continuation(details)
        reason = "no bearer token" if presented is None else "wrong token"
        return _refusal(details.method, reason)


def _refusal(method: str, reason: str) -> grpc.RpcMethodHandler:
    async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> None:
        logger.warning(
            "admin call %s from %s refused: %s", method, context.peer(), reason
        )
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, "missing or wrong admin token"
        )

    return grpc.unary_unary_rpc_method_handler(refuse)


def server_credentials(settings: AdminSettings) -> grpc.ServerCredentials | None:
    """TLS for the admin port (client certificates required with a client CA)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def principal(context: grpc.aio.ServicerContext) -> str:
    """The client certificate's common name with mTLS, else empty."""
    names = context.auth_context().get("x509_common_name") or []
    return b",".join(names).decode(errors="replace") if names else ""
