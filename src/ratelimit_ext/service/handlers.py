"""Method handlers whose request parsing cannot turn into INTERNAL errors.

gRPC answers INTERNAL when a request deserializer raises. Ours return
``None`` for bytes that are not a valid message (for example a string field
with invalid UTF-8), so the servicer can answer ``INVALID_ARGUMENT`` itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)


def tolerant_parser(message_type: type[M]) -> Callable[[bytes], M | None]:
    def parse(data: bytes) -> M | None:
        try:
            message: M = message_type.FromString(data)
            return message
        except DecodeError:
            return None

    return parse


def unary_service(
    service: str,
    methods: dict[str, tuple[Callable[..., Awaitable[Any]], type[Message]]],
) -> grpc.GenericRpcHandler:
    """A generic handler for unary methods: name -> (behaviour, request type)."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=tolerant_parser(request_type),
            response_serializer=lambda message: message.SerializeToString(),
        )
        for name, (behaviour, request_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)


class _ErrorRecorder(Protocol):
    def record_rpc_error(self, method: str, status: str) -> None: ...


async def abort(
    context: grpc.aio.ServicerContext,
    recorder: _ErrorRecorder,
    method: str,
    code: grpc.StatusCode,
    message: str,
) -> NoReturn:
    """Answer the call with a gRPC error status, counted in telemetry."""
    recorder.record_rpc_error(method, code.name)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")
