"""A typed, blocking client of the admin API (the CLI and the control plane).

The token is read from a file and sent as ``authorization: Bearer <token>``;
it never appears on a command line, in an argument list or in a ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from ratelimit_ext.admin.api import ACTOR_METADATA, METHODS, SERVICE_NAME

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """Trust ``ca`` for the server; present ``cert``/``key`` for mTLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca),
            private_key=read(self.key),
            certificate_chain=read(self.cert),
        )


class AdminClient:
    """One channel to one admin server; ``call`` per method, by name."""

    def __init__(
        self,
        target: str,
        *,
        token_file: Path | None = None,
        actor: str = "",
        tls: ClientTls | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._metadata: list[tuple[str, str]] = []
        if token_file is not None:
            token = token_file.read_text().strip()
            self._metadata.append(("authorization", f"Bearer {token}"))
        if actor:
            self._metadata.append((ACTOR_METADATA, actor))
        self._channel = (
            grpc.secure_channel(target, tls.credentials())
            if tls is not None
            else grpc.insecure_channel(target)
        )

    def __repr__(self) -> str:
        return f"AdminClient({self.target!r})"

    def call(self, method: str, request: Message, response_type: type[M]) -> M:
        """Call ``method``; raises ``grpc.RpcError`` with the server's status."""
        expected_request, expected_response = METHODS[method]
        if not isinstance(request, expected_request):
            raise TypeError(f"{method} takes {expected_request.__name__}")
        if response_type is not expected_response:
            raise TypeError(f"{method} returns {expected_response.__name__}")
        stub = self._channel.unary_unary(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        response: M = stub(request, timeout=self._timeout, metadata=self._metadata)
        return response

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
