"""The admin API's own gRPC server, beside (never on) the data port.

Used by the server (``Sidecar``) and by the control plane: one
``AdminServicer`` over the config directory, behind the token check, with
TLS when configured. The token file is read when the server is built, so a
missing or empty file stops the process at start instead of refusing every
call later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from ratelimit_ext.admin.api import SERVICE_NAME
from ratelimit_ext.admin.audit import AuditLog
from ratelimit_ext.admin.auth import TokenFile, TokenInterceptor, server_credentials
from ratelimit_ext.admin.metrics import AdminCallCounter
from ratelimit_ext.admin.service import AdminServicer, ServerRuntime
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.admin.writer import PolicyWriter
from ratelimit_ext.service.handlers import unary_service
from ratelimit_ext.store.auditlist import open_audit_list
from ratelimit_ext.telemetry import Telemetry

logger = logging.getLogger(__name__)


class AdminServer:
    """Serves ``ratelimit_ext.admin.v1.Admin`` on ``settings.listen``."""

    def __init__(
        self,
        settings: AdminSettings,
        servicer: AdminServicer,
        *,
        reuse_port: bool = False,
        telemetry: Telemetry | None = None,
    ) -> None:
        if settings.listen is None:
            raise ValueError("the admin API is disabled (no --admin-listen)")
        self._listen = settings.listen
        self._settings = settings
        tokens = TokenFile(settings.token_file) if settings.token_file else None
        if tokens is not None:
            tokens.load()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if telemetry is not None:  # outermost: counts refused calls too
            interceptors.append(AdminCallCounter(telemetry))
        if tokens is not None:
            interceptors.append(TokenInterceptor(tokens))
        # Shared only by the workers of one server (``--workers``), like its
        # data port; otherwise a port already taken is an error.
        options = [("grpc.so_reuseport", 1 if reuse_port else 0)]
        self._server = grpc.aio.server(interceptors=interceptors, options=options)
        self._servicer = servicer
        self._server.add_generic_rpc_handlers(
            (unary_service(SERVICE_NAME, servicer.handlers()),)
        )
        self.port = 0

    async def start(self) -> None:
        credentials = server_credentials(self._settings)
        if credentials is None:
            self.port = self._server.add_insecure_port(self._listen)
        else:
            self.port = self._server.add_secure_port(self._listen, credentials)
        await self._server.start()
        logger.info(
            "admin API on %s (port %d): %s, %s",
            self._listen,
            self.port,
            "bearer token" if self._settings.token_file else "no token (loopback)",
            _tls_mode(self._settings),
        )

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)
        await self._servicer.close()


def build_admin(
    settings: AdminSettings,
    config: Path,
    *,
    runtime: ServerRuntime | None = None,
    role: str = "server",
    on_change: Callable[[], None] | None = None,
    reuse_port: bool = False,
    telemetry: Telemetry | None = None,
) -> AdminServer:
    """The admin server over ``config`` (changes need it to be a directory)."""
    servicer = AdminServicer(
        config=config,
        writer=PolicyWriter.for_directory(config),
        audit=AuditLog(
            settings.audit_path(config),
            open_audit_list(runtime.store_url) if runtime else None,
        ),
        runtime=runtime,
        role=role,
        on_change=on_change,
    )
    return AdminServer(settings, servicer, reuse_port=reuse_port, telemetry=telemetry)


def _tls_mode(settings: AdminSettings) -> str:
    if settings.tls_client_ca is not None:
        return "mTLS (client certificates required)"
    if settings.tls_cert is not None:
        return "TLS"
    return "plaintext"
