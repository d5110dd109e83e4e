"""ShouldRateLimit over real gRPC: protos, statuses, headers, bad input."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.wrappers_pb2 import UInt64Value
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.inprocess import Running
from harness.ports import free_port

Response = rls_pb2.RateLimitResponse
Descriptor = ratelimit_pb2.RateLimitDescriptor


def descriptor(*entries: tuple[str, str], **fields: object) -> Descriptor:
    return Descriptor(
        entries=[Descriptor.Entry(key=k, value=v) for k, v in entries],
        **fields,  # type: ignore[arg-type]
    )


def request(*descriptors: Descriptor, domain: str = "api") -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors)


async def test_statuses_carry_limit_remaining_and_reset(sidecar: Running) -> None:
    req = request(descriptor(("generic_key", "three")), descriptor(("x", "y")))
    first = await sidecar.rls.ShouldRateLimit(req)
    assert first.overall_code == Response.OK
    limited, unmatched = first.statuses
    assert limited.code == Response.OK
    assert limited.current_limit.requests_per_unit == 3
    assert limited.current_limit.unit == Response.RateLimit.MINUTE
    assert limited.current_limit.name == "three"
    assert limited.limit_remaining == 2
    assert 0 < limited.duration_until_reset.ToNanoseconds() <= 60 * 10**9
    assert not unmatched.HasField("current_limit")
    for _ in range(2):
        await sidecar.rls.ShouldRateLimit(req)
    over = await sidecar.rls.ShouldRateLimit(req)
    assert over.overall_code == Response.OVER_LIMIT
    assert over.statuses[0].code == Response.OVER_LIMIT
    assert over.statuses[0].limit_remaining == 0
    assert over.statuses[1].code == Response.OK


async def test_unlimited_answers_max_remaining(sidecar: Running) -> None:
    reply = await sidecar.rls.ShouldRateLimit(
        request(descriptor(("generic_key", "free")))
    )
    assert reply.statuses[0].limit_remaining == 4294967295


async def test_unknown_domain_is_ok_for_every_descriptor(sidecar: Running) -> None:
    reply = await sidecar.rls.ShouldRateLimit(
        request(descriptor(("a", "b")), descriptor(("c", "d")), domain="other")
    )
    assert reply.overall_code == Response.OK
    assert [s.code for s in reply.statuses] == [Response.OK, Response.OK]


async def test_descriptor_hits_addend_and_override(sidecar: Running) -> None:
    check_only = descriptor(("generic_key", "three"), hits_addend=UInt64Value(value=0))
    for _ in range(4):
        reply = await sidecar.rls.ShouldRateLimit(request(check_only))
        assert reply.statuses[0].limit_remaining == 3
    override = descriptor(
        ("generic_key", "three"),
        limit=Descriptor.RateLimitOverride(
            requests_per_unit=1, unit=Response.RateLimit.SECOND
        ),
    )
    reply = await sidecar.rls.ShouldRateLimit(request(override))
    assert reply.statuses[0].current_limit.requests_per_unit == 1
    assert reply.statuses[0].current_limit.unit == Response.RateLimit.SECOND
    reply = await sidecar.rls.ShouldRateLimit(request(override))
    assert reply.overall_code == Response.OVER_LIMIT


async def test_request_hits_addend_zero_means_one(sidecar: Running) -> None:
    req = request(descriptor(("generic_key", "hourly")))
    req.hits_addend = 0
    reply = await sidecar.rls.ShouldRateLimit(req)
    assert reply.statuses[0].limit_remaining == 9
    req.hits_addend = 4
    reply = await sidecar.rls.ShouldRateLimit(req)
    assert reply.statuses[0].limit_remaining == 5


async def test_optional_ratelimit_headers(
    start_sidecar: Callable[..., object],
) -> None:
    running: Running = await start_sidecar(ratelimit_headers=True)  # type: ignore[misc]
    req = request(
        descriptor(("generic_key", "hourly")), descriptor(("generic_key", "three"))
    )
    reply = await running.rls.ShouldRateLimit(req)
    headers = {h.key: h.value for h in reply.response_headers_to_add}
    # The descriptor closest to its limit is "three" (2 of 3 left).
    assert headers["ratelimit-limit"] == "3, 3;w=60"
    assert headers["ratelimit-remaining"] == "2"
    assert 1 <= int(headers["ratelimit-reset"]) <= 60


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(descriptor(("a", "b")), domain=""), "domain must not be empty"),
        (request(), "descriptors must not be empty"),
        (request(descriptor()), "descriptors[0] has no entries"),
        (request(descriptor(("", "v"))), "empty key"),
        (request(descriptor(("k", "v" * 10_000))), "value longer than"),
        (request(descriptor(("k", "v")), domain="d" * 1000), "domain is longer"),
        (request(*[descriptor(("k", "v"))] * 65), "more than 64 descriptors"),
        (
            request(
                descriptor(
                    ("k", "v"), limit=Descriptor.RateLimitOverride(requests_per_unit=1)
                )
            ),
            "no valid unit",
        ),
    ],
    ids=[
        "empty-domain",
        "no-descriptors",
        "empty-descriptor",
        "empty-key",
        "huge-value",
        "huge-domain",
        "too-many-descriptors",
        "override-without-unit",
    ],
)
async def test_malformed_requests_get_invalid_argument(
    sidecar: Running, req: rls_pb2.RateLimitRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.rls.ShouldRateLimit(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    # and the server keeps serving
    ok = await sidecar.rls.ShouldRateLimit(request(descriptor(("generic_key", "free"))))
    assert ok.overall_code == Response.OK


async def test_invalid_utf8_is_invalid_argument_not_internal(sidecar: Running) -> None:
    raw = (
        request(descriptor(("k", "abc"))).SerializeToString().replace(b"abc", b"a\xffc")
    )
    call = sidecar.channel.unary_unary(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        request_serializer=lambda b: b,
        response_deserializer=Response.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(raw)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_store_failure_is_unavailable(
    start_sidecar: Callable[..., object],
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    running: Running = await start_sidecar(store=dead)  # type: ignore[misc]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.rls.ShouldRateLimit(request(descriptor(("generic_key", "three"))))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Descriptors that need no counting still answer.
    ok = await running.rls.ShouldRateLimit(request(descriptor(("generic_key", "free"))))
    assert ok.overall_code == Response.OK


async def test_health_serving_then_not_serving_on_stop(
    start_sidecar: Callable[..., object],
) -> None:
    running: Running = await start_sidecar()  # type: ignore[misc]
    health = health_pb2_grpc.HealthStub(running.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await running.sidecar.health.enter_graceful_shutdown()
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_call_picked_up_after_its_deadline_counts_nothing(
    sidecar: Running,
) -> None:
    """The server's event loop is blocked while a call with a 50 ms deadline
    arrives (as on an overloaded server): Envoy has given up and let the
    request through, so the late call must not count. gRPC itself drops a
    call whose deadline passed before its handler started."""
    req = request(descriptor(("generic_key", "three")))
    address = f"127.0.0.1:{sidecar.sidecar.port}"
    errors: list[grpc.StatusCode] = []

    def call_from_another_thread() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            try:
                stub.ShouldRateLimit(req, timeout=0.05)
            except grpc.RpcError as exc:
                errors.append(exc.code())

    caller = threading.Thread(target=call_from_another_thread)
    caller.start()
    time.sleep(0.3)  # blocks this event loop, the server's too
    caller.join(timeout=5)
    await asyncio.sleep(0.2)  # the server now picks the late call up

    check = request(descriptor(("generic_key", "three"), hits_addend=UInt64Value()))
    reply = await sidecar.rls.ShouldRateLimit(check)

    assert errors == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert reply.statuses[0].limit_remaining == 3


async def test_start_up_objects_are_kept_out_of_the_garbage_collectors_way(
    sidecar: Running,
) -> None:
    """A full collection walked every module, proto and policy object (about
    90 ms here, longer than Envoy's 20 ms budget); frozen, they are skipped."""
    assert gc.get_freeze_count() > 10_000
    started = time.perf_counter()
    gc.collect()
    assert time.perf_counter() - started < 0.05
