"""Admin API calls counted by method and result, refused ones included.

``AdminCallCounter`` is the outermost interceptor of the admin server: it
wraps whatever handler the rest of the chain chose (the token check's refusal
or the method itself) and counts the call with the status it ended with. The
method label is a known admin method name or ``_unknown``: a client picks the
path, so any other text never becomes a label.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ratelimit_ext.admin.api import METHODS, SERVICE_NAME
from ratelimit_ext.telemetry import Telemetry

UNKNOWN_METHOD = "_unknown"
_PREFIX = f"/{SERVICE_NAME}/"


def method_label(path: str) -> str:
    """``/ratelimit_ext.admin.v1.Admin/GetPolicy`` -> ``GetPolicy``."""
    name = path.removeprefix(_PREFIX)
    return name if path.startswith(_PREFIX) and name in METHODS else UNKNOWN_METHOD


class AdminCallCounter(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._counted(method_label(details.method), handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _counted(
        self, method: str, behaviour: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        record = self._telemetry.record_admin_call

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await behaviour(request, context)
            except BaseException:
                code = context.code()
                record(method, code.name if code is not None else "UNKNOWN")
                raise
            code = context.code()
            record(method, code.name if code is not None else "OK")
            return response

        return counted
