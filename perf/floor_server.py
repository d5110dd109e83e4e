"""Do-nothing RateLimitService v3 server: the floor cost of a Python gRPC call.

Every ShouldRateLimit call gets the same prebuilt response (one descriptor status),
so whatever CPU this process burns per call is grpc.aio + protobuf + asyncio
overhead that the real server cannot go below.

    python perf/floor_server.py --listen 127.0.0.1:50051 [--over-limit]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

LIMIT = 1_000_000_000


def constant_response(over_limit: bool) -> rls_pb2.RateLimitResponse:
    code = (
        rls_pb2.RateLimitResponse.OVER_LIMIT
        if over_limit
        else rls_pb2.RateLimitResponse.OK
    )
    status = rls_pb2.RateLimitResponse.DescriptorStatus(
        code=code,
        current_limit=rls_pb2.RateLimitResponse.RateLimit(
            requests_per_unit=LIMIT,
            unit=rls_pb2.RateLimitResponse.RateLimit.SECOND,
        ),
        limit_remaining=0 if over_limit else LIMIT - 1,
    )
    return rls_pb2.RateLimitResponse(overall_code=code, statuses=[status])


class FloorServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, response: rls_pb2.RateLimitResponse) -> None:
        self._response = response

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        return self._response


async def serve(listen: str, over_limit: bool) -> None:
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
        FloorServicer(constant_response(over_limit)), server
    )
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"floor_server: cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port, e.g. 127.0.0.1:0")
    parser.add_argument("--over-limit", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.over_limit))


if __name__ == "__main__":
    main()
