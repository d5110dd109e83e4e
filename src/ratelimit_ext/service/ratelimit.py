"""Envoy RateLimitService v3 (``ShouldRateLimit``): protos in, verdicts out.

Each malformed request gets one precise ``INVALID_ARGUMENT`` and the check
ladder returns before any counting happens. A store failure is
``UNAVAILABLE`` so that Envoy's ``failure_mode_deny`` decides.
"""

from __future__ import annotations

import logging

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.duration_pb2 import Duration

from ratelimit_ext.decision import DecisionEngine, DescriptorQuery, RateLimitQuery
from ratelimit_ext.errors import StoreError
from ratelimit_ext.headers import ratelimit_headers
from ratelimit_ext.policy.model import Unit, Window
from ratelimit_ext.service.handlers import abort
from ratelimit_ext.service.limits import InvalidRequest, RequestLimits
from ratelimit_ext.telemetry import Telemetry
from ratelimit_ext.verdict import Code, DescriptorVerdict, Verdict

logger = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"

_Response = rls_pb2.RateLimitResponse
_PROTO_UNIT = {unit: _Response.RateLimit.Unit.Value(unit.name) for unit in Unit}
_UNIT_OF_PROTO = {value: unit for unit, value in _PROTO_UNIT.items()}
_PROTO_CODE = {Code.OK: _Response.OK, Code.OVER_LIMIT: _Response.OVER_LIMIT}


def query_from_proto(
    request: rls_pb2.RateLimitRequest, limits: RequestLimits
) -> RateLimitQuery:
    """Validate and translate a request; raises ``InvalidRequest``."""
    if not request.domain:
        raise InvalidRequest("domain must not be empty")
    limits.check_domain(request.domain)
    if not request.descriptors:
        raise InvalidRequest("descriptors must not be empty")
    if len(request.descriptors) > limits.max_descriptors:
        raise InvalidRequest(f"more than {limits.max_descriptors} descriptors")
    hits = limits.check_hits(request.hits_addend or 1, "hits_addend")
    descriptors = tuple(
        _descriptor(index, d, limits) for index, d in enumerate(request.descriptors)
    )
    return RateLimitQuery(request.domain, descriptors, hits)


def _descriptor(index: int, proto: object, limits: RequestLimits) -> DescriptorQuery:
    entries = tuple((e.key, e.value) for e in proto.entries)  # type: ignore[attr-defined]
    limits.check_entries(index, entries)
    override = None
    if proto.HasField("limit"):  # type: ignore[attr-defined]
        override = _override(index, proto.limit)  # type: ignore[attr-defined]
    hits = None
    if proto.HasField("hits_addend"):  # type: ignore[attr-defined]
        hits = limits.check_hits(
            proto.hits_addend.value,  # type: ignore[attr-defined]
            f"descriptors[{index}].hits_addend",
        )
    return DescriptorQuery(entries, override, hits)


def _override(index: int, limit: object) -> Window:
    unit = _UNIT_OF_PROTO.get(limit.unit)  # type: ignore[attr-defined]
    if unit is None:
        raise InvalidRequest(f"descriptors[{index}].limit has no valid unit")
    return Window(limit.requests_per_unit, unit)  # type: ignore[attr-defined]


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(max(0, round(seconds * 1e9)))
    return duration


def _status(verdict: DescriptorVerdict) -> rls_pb2.RateLimitResponse.DescriptorStatus:
    status = _Response.DescriptorStatus(
        code=_PROTO_CODE[verdict.code], limit_remaining=verdict.remaining
    )
    window = verdict.window
    if window is not None:
        status.current_limit.requests_per_unit = window.limit
        status.current_limit.unit = _PROTO_UNIT[window.unit]
        if verdict.name:
            status.current_limit.name = verdict.name
        status.duration_until_reset.CopyFrom(_duration(verdict.reset_seconds))
    return status


def response_from_verdict(
    verdict: Verdict, with_headers: bool
) -> rls_pb2.RateLimitResponse:
    response: rls_pb2.RateLimitResponse = _Response(
        overall_code=_PROTO_CODE[verdict.code],
        statuses=[_status(d) for d in verdict.descriptors],
    )
    if with_headers:
        for key, value in ratelimit_headers(verdict):
            response.response_headers_to_add.add(key=key, value=value)
    return response


class RateLimitServicer:
    """The gRPC face of the decision engine."""

    def __init__(
        self,
        engine: DecisionEngine,
        telemetry: Telemetry,
        *,
        limits: RequestLimits,
        response_headers: bool = False,
    ) -> None:
        self._engine = engine
        self._telemetry = telemetry
        self._limits = limits
        self._response_headers = response_headers

    async def ShouldRateLimit(
        self,
        request: rls_pb2.RateLimitRequest | None,
        context: grpc.aio.ServicerContext,
    ) -> rls_pb2.RateLimitResponse:
        if request is None:
            return await abort(
                context,
                self._telemetry,
                METHOD,
                grpc.StatusCode.INVALID_ARGUMENT,
                "not a RateLimitRequest",
            )
        try:
            query = query_from_proto(request, self._limits)
        except InvalidRequest as exc:
            return await abort(
                context,
                self._telemetry,
                METHOD,
                grpc.StatusCode.INVALID_ARGUMENT,
                str(exc),
            )
        try:
            verdict = await self._engine.decide(query)
        except StoreError:
            return await abort(
                context,
                self._telemetry,
                METHOD,
                grpc.StatusCode.UNAVAILABLE,
                "counter store unavailable",
            )
        except Exception:
            logger.exception("bug while deciding for domain %r", query.domain[:64])
            return await abort(
                context,
                self._telemetry,
                METHOD,
                grpc.StatusCode.INTERNAL,
                "internal error",
            )
        return response_from_verdict(verdict, self._response_headers)
