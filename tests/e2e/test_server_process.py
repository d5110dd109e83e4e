"""The server as a process: clean shutdown, and hostile gRPC requests.

No Envoy here: requests go straight to the server's gRPC port.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from grpc import StatusCode as Code
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e.stack import DOMAIN, make_callers, write_config
from harness.server import ServerProcess

SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _rls_request(
    domain: str = DOMAIN, *entries: tuple[str, str], hits: int = 0
) -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    if entries:
        descriptor = ratelimit_pb2.RateLimitDescriptor()
        for key, value in entries:
            descriptor.entries.add(key=key, value=value)
        request.descriptors.append(descriptor)

    return request


def _raw_call(channel: grpc.Channel, method: str, payload: bytes) -> tuple[Code, bytes]:
    """Send ``payload`` as the serialized request; the status and answer bytes."""
    call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    try:
        answer: bytes = call(payload, timeout=10.0)
    except grpc.RpcError as error:
        code: Code = error.code()
        return code, b""

    return Code.OK, answer


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (string/bytes/message)."""
    assert field_number < 16 and len(payload) < 128
    return bytes([field_number << 3 | 2, len(payload)]) + payload


def _entry_bytes(key: bytes, value: bytes) -> bytes:
    entry = _length_delimited(1, key) + _length_delimited(2, value)
    descriptor = _length_delimited(1, entry)

    return _length_delimited(1, DOMAIN.encode()) + _length_delimited(2, descriptor)


def _check_with_header(value: bytes) -> bytes:
    """A CheckRequest with one ``x-api-key`` header of raw ``value`` bytes."""
    entry = _length_delimited(1, b"x-api-key") + _length_delimited(2, value)
    http = _length_delimited(3, entry)  # HttpRequest.headers (map entry)
    request = _length_delimited(2, http)  # Request.http
    attributes = _length_delimited(4, request)  # AttributeContext.request

    return _length_delimited(2, attributes)  # CheckRequest.attributes


def _huge_descriptor_count() -> bytes:
    request = rls_pb2.RateLimitRequest(domain=DOMAIN)
    for n in range(20_000):
        request.descriptors.add().entries.add(key="generic_key", value=f"v{n}")
    payload: bytes = request.SerializeToString()

    return payload


# The exact status where the spec names one; otherwise any deliberate answer.
# INTERNAL is what grpcio itself answers for bytes that do not deserialize.
UNDECODABLE = {Code.INVALID_ARGUMENT, Code.INTERNAL}
HOSTILE_REQUESTS: dict[str, tuple[str, bytes, set[Code]]] = {
    "missing-domain": (
        SHOULD_RATE_LIMIT,
        _rls_request("", ("generic_key", "x")).SerializeToString(),
        {Code.INVALID_ARGUMENT},
    ),
    "empty-descriptors": (
        SHOULD_RATE_LIMIT,
        _rls_request(DOMAIN).SerializeToString(),
        {Code.INVALID_ARGUMENT},
    ),
    "empty-request": (SHOULD_RATE_LIMIT, b"", {Code.INVALID_ARGUMENT}),
    "descriptor-without-entries": (
        SHOULD_RATE_LIMIT,
        rls_pb2.RateLimitRequest(
            domain=DOMAIN, descriptors=[ratelimit_pb2.RateLimitDescriptor()]
        ).SerializeToString(),
        {Code.OK, Code.INVALID_ARGUMENT},
    ),
    "huge-value": (
        SHOULD_RATE_LIMIT,
        _rls_request(DOMAIN, ("user_id", "u" * 1_000_000)).SerializeToString(),
        {Code.OK, Code.INVALID_ARGUMENT},
    ),
    "huge-key": (
        SHOULD_RATE_LIMIT,
        _rls_request(DOMAIN, ("k" * 1_000_000, "v")).SerializeToString(),
        {Code.OK, Code.INVALID_ARGUMENT},
    ),
    "huge-domain": (
        SHOULD_RATE_LIMIT,
        _rls_request("d" * 1_000_000, ("generic_key", "x")).SerializeToString(),
        {Code.OK, Code.INVALID_ARGUMENT},
    ),
    "max-hits-addend": (
        SHOULD_RATE_LIMIT,
        _rls_request(DOMAIN, ("user_id", "hits"), hits=2**32 - 1).SerializeToString(),
        {Code.OK, Code.INVALID_ARGUMENT},
    ),
    "twenty-thousand-descriptors": (
        SHOULD_RATE_LIMIT,
        _huge_descriptor_count(),
        {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED},
    ),
    "over-message-size-limit": (
        SHOULD_RATE_LIMIT,
        _rls_request(DOMAIN, ("user_id", "x" * 5_000_000)).SerializeToString(),
        {Code.RESOURCE_EXHAUSTED, Code.INVALID_ARGUMENT, Code.OK},
    ),
    "invalid-utf8-domain": (
        SHOULD_RATE_LIMIT,
        _length_delimited(1, b"\xff\xfe\xc3(")
        + _length_delimited(2, _length_delimited(1, _length_delimited(1, b"k"))),
        UNDECODABLE,
    ),
    "invalid-utf8-value": (
        SHOULD_RATE_LIMIT,
        _entry_bytes(b"user_id", b"\xc3\x28\xa0\xa1"),
        UNDECODABLE,
    ),
    "not-protobuf": (SHOULD_RATE_LIMIT, b"\xff\xff\xff\xff\x0f", UNDECODABLE),
    "check-empty-request": (CHECK, b"", {Code.OK, Code.INVALID_ARGUMENT}),
    "check-invalid-utf8-header": (
        CHECK,
        _check_with_header(b"\xff"),
        UNDECODABLE | {Code.OK},
    ),
    "check-not-protobuf": (CHECK, b"\x0a\xff\xff\xff\xff\x0f", UNDECODABLE),
}


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("server-config")

    return write_config(workdir / "config", make_callers())


@pytest.fixture(scope="module")
def server(
    config_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One memory-store server shared by the hostile-request tests."""
    workdir = tmp_path_factory.mktemp("server")
    with ServerProcess(config_dir, workdir, metrics=False) as process:
        yield process


def _assert_still_serving(server: ServerProcess) -> None:
    assert server.health() == SERVING, server.describe()
    request = _rls_request(DOMAIN, ("generic_key", "free-for-all"))
    with server.channel() as channel:
        call = channel.unary_unary(
            SHOULD_RATE_LIMIT,
            request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
            response_deserializer=rls_pb2.RateLimitResponse.FromString,
        )
        response = call(request, timeout=10.0)
    assert response.overall_code == rls_pb2.RateLimitResponse.OK, server.describe()


@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
def test_hostile_request_gets_a_status_and_server_keeps_serving(
    server: ServerProcess, case: str
) -> None:
    """Each malformed or oversized request is answered; the server lives on."""
    method, payload, expected = HOSTILE_REQUESTS[case]

    with server.channel() as channel:
        code, answer = _raw_call(channel, method, payload)

    assert code in expected, f"{case}: got {code}, expected one of {expected}\n" + (
        server.describe()
    )
    if method == CHECK and code is Code.OK:
        decision = external_auth_pb2.CheckResponse.FromString(answer)
        assert decision.status.code != 0, f"{case}: a hostile Check was allowed"
        assert decision.denied_response.status.code == 401, decision
    _assert_still_serving(server)


def test_check_without_key_is_denied_over_raw_grpc(server: ServerProcess) -> None:
    """Straight to Check: a request with headers but no key is a 401 denial."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers[":path"] = "/"
    with server.channel() as channel:
        call = channel.unary_unary(
            CHECK,
            request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
            response_deserializer=external_auth_pb2.CheckResponse.FromString,
        )
        response = call(request, timeout=10.0)

    assert response.status.code != 0
    assert response.denied_response.status.code == 401
    names = {h.header.key.lower() for h in response.denied_response.headers}
    assert "www-authenticate" in names


def _watch_health(server: ServerProcess, seen: queue.Queue[int | None]) -> grpc.Future:
    """Stream grpc.health.v1 Watch("") updates into ``seen`` (None at the end)."""
    channel = server.channel()
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=30.0
    )

    def pump() -> None:
        try:
            for update in stream:
                seen.put(update.status)
        except grpc.RpcError:
            pass
        finally:
            seen.put(None)
            channel.close()

    threading.Thread(target=pump, name="health-watch", daemon=True).start()

    return stream


def test_sigterm_turns_not_serving_and_exits_zero(
    config_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM: health watchers see NOT_SERVING, then the process exits 0."""
    process = ServerProcess(config_dir, tmp_path, extra_args=["--grace", "2"])
    with process:
        seen: queue.Queue[int | None] = queue.Queue()
        stream = _watch_health(process, seen)
        assert seen.get(timeout=10) == SERVING, process.describe()

        process.send_signal(signal.SIGTERM)
        statuses = []
        while (status := seen.get(timeout=20)) is not None:
            statuses.append(status)
            if status == NOT_SERVING:
                stream.cancel()
        code = process.wait(timeout=20)

    assert NOT_SERVING in statuses, f"{statuses}\n{process.describe()}"
    assert code == 0, process.describe()
