"""Authorization.Check over real gRPC: API keys, headers, metadata, 429."""

from __future__ import annotations

import json

from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

from harness.inprocess import Running

CheckResponse = external_auth_pb2.CheckResponse


def check(
    headers: dict[str, str], extensions: dict[str, str] | None = None
) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.headers.update(headers)
    req.attributes.context_extensions.update(extensions or {})
    return req


def headers_of(options: object) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}  # type: ignore[attr-defined]


async def test_missing_key_is_401_with_json_and_challenge(sidecar: Running) -> None:
    reply = await sidecar.authz.Check(check({}))
    assert reply.status.code == code_pb2.UNAUTHENTICATED
    denied = reply.denied_response
    assert denied.status.code == 401
    headers = headers_of(denied.headers)
    assert headers["www-authenticate"].startswith("ApiKey realm=")
    assert headers["content-type"] == "application/json"
    assert json.loads(denied.body)["error"] == "unauthorized"


async def test_unknown_and_disabled_keys_are_401(sidecar: Running) -> None:
    for key in ("nope", "key-disabled"):
        reply = await sidecar.authz.Check(check({"x-api-key": key}))
        assert reply.denied_response.status.code == 401
        assert "key" not in reply.denied_response.body.replace("API key", "")


async def test_known_key_sets_identity_headers_and_metadata(sidecar: Running) -> None:
    reply = await sidecar.authz.Check(check({"x-api-key": "key-pro"}))
    assert reply.status.code == code_pb2.OK
    upstream = headers_of(reply.ok_response.headers)
    assert upstream == {"x-user-id": "bob", "x-user-tier": "pro"}
    assert dict(reply.dynamic_metadata) == {"identity": "bob", "tier": "pro"}


async def test_bearer_token_is_accepted(sidecar: Running) -> None:
    reply = await sidecar.authz.Check(check({"authorization": "Bearer key-free"}))
    assert headers_of(reply.ok_response.headers)["x-user-id"] == "alice"


async def test_enforcement_in_check_answers_429(sidecar: Running) -> None:
    req = check({"x-api-key": "key-free"}, {"ratelimit_domain": "api"})
    for remaining in ("1", "0"):
        reply = await sidecar.authz.Check(req)
        assert reply.status.code == code_pb2.OK
        to_client = headers_of(reply.ok_response.response_headers_to_add)
        assert to_client["ratelimit-remaining"] == remaining
    reply = await sidecar.authz.Check(req)
    assert reply.status.code == code_pb2.RESOURCE_EXHAUSTED
    denied = reply.denied_response
    assert denied.status.code == 429
    headers = headers_of(denied.headers)
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["ratelimit-limit"] == "2, 2;w=60"
    assert headers["ratelimit-remaining"] == "0"
    # Another caller has its own counters.
    other = await sidecar.authz.Check(
        check({"x-api-key": "key-pro"}, {"ratelimit_domain": "api"})
    )
    assert other.status.code == code_pb2.OK


async def test_without_enforcement_check_never_counts(sidecar: Running) -> None:
    for _ in range(5):
        reply = await sidecar.authz.Check(check({"x-api-key": "key-free"}))
        assert reply.status.code == code_pb2.OK
