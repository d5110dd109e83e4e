"""Spans of an in-process sidecar: one server span per call, continuing the
caller's W3C or B3 trace, with the store call as its child."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from harness.ports import LOOPBACK, free_port
from observability.support import (
    API_KEY,
    CHECK_DOMAIN,
    DOMAIN,
    IDENTITY,
    StartObs,
    write_policy,
)
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.server import ServeSettings, Sidecar
from ratelimit_ext.service import ratelimit
from ratelimit_ext.store.guard import GuardSettings
from ratelimit_ext.telemetry import TelemetrySetup

RLS_SPAN = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
STORE_SPAN = "ratelimit_ext.store.hit"


def caller_ids() -> tuple[str, str]:
    """A fresh (trace id, span id) in hex, as Envoy would send them."""
    return secrets.token_hex(16), secrets.token_hex(8)


def finished(obs_spans: object) -> dict[str, list[ReadableSpan]]:
    spans = obs_spans.get_finished_spans()  # type: ignore[attr-defined]
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    return by_name


async def aborted_spans(obs_spans: object) -> dict[str, list[ReadableSpan]]:
    """The spans once the server span has ended: ``abort`` sends the status
    to the caller before the servicer's code (and so the span) ends."""
    for _ in range(200):
        spans = finished(obs_spans)
        if RLS_SPAN in spans:
            return spans
        await asyncio.sleep(0.01)
    return finished(obs_spans)


def assert_continues(span: ReadableSpan, trace_id: str, parent_id: str) -> None:
    assert span.kind is SpanKind.SERVER
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == int(trace_id, 16)
    assert span.parent.span_id == int(parent_id, 16)
    assert span.parent.is_remote


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None and parent.context is not None
    assert child.context is not None
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent.span_id == parent.context.span_id


Headers = Callable[[str, str], tuple[tuple[str, str], ...]]

PROPAGATION: dict[str, Headers] = {
    "w3c": lambda t, s: (("traceparent", f"00-{t}-{s}-01"), ("tracestate", "e=1")),
    "b3-multi": lambda t, s: (
        ("x-b3-traceid", t),
        ("x-b3-spanid", s),
        ("x-b3-sampled", "1"),
    ),
    "b3-single": lambda t, s: (("b3", f"{t}-{s}-1"),),
}


@pytest.mark.parametrize("style", PROPAGATION)
async def test_rls_span_continues_the_callers_trace(
    start_obs: StartObs, style: str
) -> None:
    obs = await start_obs(tracing=True)
    trace_id, span_id = caller_ids()

    await obs.limit(
        ("generic_key", "bkt-named"), metadata=PROPAGATION[style](trace_id, span_id)
    )

    spans = finished(obs.spans)
    (server,) = spans[RLS_SPAN]
    assert_continues(server, trace_id, span_id)
    (store,) = spans[STORE_SPAN]
    assert_child(store, server)
    assert store.kind is SpanKind.CLIENT
    assert store.attributes == {"ratelimit_ext.store": "memory"}
    assert server.attributes is not None
    assert server.attributes["ratelimit_ext.domain"] == DOMAIN
    assert server.attributes["ratelimit_ext.code"] == "OK"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["rpc.system"] == "grpc"
    assert server.status.status_code is StatusCode.UNSET
    if style == "w3c":
        assert server.context is not None
        assert server.context.trace_state.get("e") == "1"


async def test_check_span_has_the_reason_and_no_key(start_obs: StartObs) -> None:
    obs = await start_obs(tracing=True)
    trace_id, span_id = caller_ids()

    await obs.check(
        API_KEY,
        enforce=CHECK_DOMAIN,
        metadata=(("traceparent", f"00-{trace_id}-{span_id}-01"),),
    )

    spans = finished(obs.spans)
    (server,) = spans[CHECK_SPAN]
    assert_continues(server, trace_id, span_id)
    (store,) = spans[STORE_SPAN]
    assert_child(store, server)
    attributes = dict(server.attributes or {})
    assert attributes["ratelimit_ext.authz"] == "allowed"
    assert attributes["ratelimit_ext.domain"] == CHECK_DOMAIN
    everything = [span for found in spans.values() for span in found]
    shown = " ".join(f"{s.name} {dict(s.attributes or {})}" for s in everything)
    assert API_KEY not in shown
    assert IDENTITY not in shown


async def test_no_store_span_for_an_answer_from_the_cache(
    start_obs: StartObs,
) -> None:
    obs = await start_obs(tracing=True)
    for _ in range(6):  # limit 4; the 6th is refused from the over-limit cache
        await obs.limit(("generic_key", "bkt-named"))

    spans = finished(obs.spans)

    assert len(spans[RLS_SPAN]) == 6
    assert len(spans[STORE_SPAN]) == 5
    last = max(spans[RLS_SPAN], key=lambda s: s.start_time or 0)
    assert (last.attributes or {})["ratelimit_ext.code"] == "OVER_LIMIT"


async def test_store_failure_marks_both_spans(start_obs: StartObs) -> None:
    """UNAVAILABLE is the server's error; the store span names the cause."""
    obs = await start_obs(
        tracing=True,
        store=f"redis://{LOOPBACK}:{free_port()}",
        guard=GuardSettings(timeout_seconds=2.0),
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await obs.limit(("generic_key", "bkt-named"))
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE

    spans = await aborted_spans(obs.spans)
    (server,) = spans[RLS_SPAN]
    assert server.status.status_code is StatusCode.ERROR
    assert (server.attributes or {})["rpc.grpc.status_code"] == 14
    (store,) = spans[STORE_SPAN]
    assert store.status.status_code is StatusCode.ERROR
    assert (store.attributes or {})["error.type"] == "ConnectionError"


async def test_invalid_request_is_the_callers_error(start_obs: StartObs) -> None:
    obs = await start_obs(tracing=True)
    with pytest.raises(grpc.aio.AioRpcError):
        await obs.limit(("generic_key", "x"), domain="")

    (server,) = (await aborted_spans(obs.spans))[RLS_SPAN]
    assert (server.attributes or {})["rpc.grpc.status_code"] == 3
    assert server.status.status_code is StatusCode.UNSET


async def test_a_caller_that_does_not_sample_gets_no_spans(
    start_obs: StartObs,
) -> None:
    """Envoy's sampling decision stands (parent-based sampling)."""
    obs = await start_obs(tracing=True)
    trace_id, span_id = caller_ids()

    await obs.limit(
        ("generic_key", "bkt-named"),
        metadata=(("traceparent", f"00-{trace_id}-{span_id}-00"),),
    )

    assert obs.spans is not None
    assert obs.spans.get_finished_spans() == ()


async def test_without_an_exporter_tracing_is_off_and_adds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    settings = ServeSettings(
        config=write_policy(tmp_path / "config"),
        listen=f"{LOOPBACK}:0",
        metrics_listen=None,
        watch=False,
        admin=AdminSettings(listen=None),
    )
    sidecar = Sidecar(settings, telemetry=TelemetrySetup.from_environ())

    async def behaviour(request: object, context: object) -> None:
        return None

    assert not sidecar.telemetry.tracing
    name = f"{ratelimit.SERVICE_NAME}/{ratelimit.METHOD}"
    assert sidecar.telemetry.traced(name, behaviour) is behaviour
