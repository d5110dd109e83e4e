"""Envoy ext_authz v3 (``Authorization.Check``): API keys in, identity out.

A known key is allowed: the upstream gets the identity and tier headers
(overwriting anything the client sent) and Envoy gets them as dynamic
metadata, for rate-limit descriptors built with ``metadata`` actions. When
the route's ``context_extensions`` name a ``ratelimit_domain``, the caller's
tier windows of that domain are enforced here too, in the same call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.struct_pb2 import Struct
from google.rpc import code_pb2, status_pb2

from ratelimit_ext.authn import AuthSettings, caller_of, lookup, presented_key
from ratelimit_ext.decision import DecisionEngine
from ratelimit_ext.errors import StoreError
from ratelimit_ext.headers import ratelimit_headers
from ratelimit_ext.policy.compiled import ActivePolicy
from ratelimit_ext.policy.rules import Caller
from ratelimit_ext.service.handlers import abort
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import Code, Verdict

logger = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
METHOD = "Check"
ENFORCE_EXTENSION = "ratelimit_domain"

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_CheckResponse = external_auth_pb2.CheckResponse


def request_headers(request: external_auth_pb2.CheckRequest) -> dict[str, str]:
    """Lower-cased request headers, from ``headers`` or ``header_map``."""
    http = request.attributes.request.http
    headers = {key.lower(): value for key, value in http.headers.items()}
    for header in http.header_map.headers:
        value = header.value or header.raw_value.decode("utf-8", "replace")
        headers.setdefault(header.key.lower(), value)
    return headers


def _header_options(headers: list[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
        )
        for key, value in headers
    ]


def _denied(
    http_status: int,
    rpc_code: int,
    headers: list[tuple[str, str]],
    body: Mapping[str, str],
) -> external_auth_pb2.CheckResponse:
    response = _CheckResponse(status=status_pb2.Status(code=rpc_code))
    denied = response.denied_response
    denied.status.code = http_status
    denied.headers.extend(
        _header_options([("content-type", "application/json"), *headers])
    )
    denied.body = json.dumps(body)
    return response


class AuthorizationServicer:
    def __init__(
        self,
        policy: ActivePolicy,
        engine: DecisionEngine,
        telemetry: Telemetry,
        settings: AuthSettings,
    ) -> None:
        self._policy = policy
        self._engine = engine
        self._telemetry = telemetry
        self._settings = settings

    async def Check(
        self,
        request: external_auth_pb2.CheckRequest | None,
        context: grpc.aio.ServicerContext,
    ) -> external_auth_pb2.CheckResponse:
        if request is None:
            return await abort(
                context,
                self._telemetry,
                METHOD,
                grpc.StatusCode.INVALID_ARGUMENT,
                "not a CheckRequest",
            )
        key = presented_key(request_headers(request), self._settings)
        if key is None:
            return self._unauthenticated("missing API key", "missing_key")
        record = lookup(self._policy.current, key)
        if record is None:
            return self._unauthenticated("unknown API key", "unknown_key")
        caller = caller_of(record)
        domain = request.attributes.context_extensions.get(ENFORCE_EXTENSION)
        verdict = None
        if domain:
            try:
                verdict = await self._engine.check_caller(domain, caller)
            except StoreError:
                return await abort(
                    context,
                    self._telemetry,
                    METHOD,
                    grpc.StatusCode.UNAVAILABLE,
                    "counter store unavailable",
                )
        if verdict is not None and verdict.code is Code.OVER_LIMIT:
            self._telemetry.record_authz("over_limit")
            return _denied(
                429,
                code_pb2.RESOURCE_EXHAUSTED,
                ratelimit_headers(verdict),
                {"error": "too_many_requests", "message": "rate limit exceeded"},
            )
        self._telemetry.record_authz("allowed")
        return self._allowed(caller, verdict)

    def _allowed(
        self, caller: Caller, verdict: Verdict | None
    ) -> external_auth_pb2.CheckResponse:
        upstream = [(self._settings.identity_header, caller.identity or "")]
        if caller.tier:
            upstream.append((self._settings.tier_header, caller.tier))
        metadata = Struct()
        metadata.update({"identity": caller.identity or "", "tier": caller.tier or ""})
        response = _CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK), dynamic_metadata=metadata
        )
        ok = response.ok_response
        ok.headers.extend(_header_options(upstream))
        if verdict is not None:
            ok.response_headers_to_add.extend(
                _header_options(ratelimit_headers(verdict))
            )
        return response

    def _unauthenticated(
        self, reason: str, metric_reason: str
    ) -> external_auth_pb2.CheckResponse:
        self._telemetry.record_authz(metric_reason)
        challenge = (
            f'ApiKey realm="{self._settings.realm}", '
            f'header="{self._settings.api_key_header}"'
        )
        return _denied(
            401,
            code_pb2.UNAUTHENTICATED,
            [("www-authenticate", challenge)],
            {"error": "unauthorized", "message": reason},
        )
