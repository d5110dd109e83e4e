"""OTLP export, switched on by the standard OpenTelemetry variables.

A small OTLP/gRPC collector runs in the test; the server (a real process)
sends it spans and metrics because ``OTEL_EXPORTER_OTLP_ENDPOINT`` says so.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

from harness.ports import LOOPBACK
from harness.server import ServerProcess
from observability.support import DOMAIN, write_policy
from ratelimit_ext.telemetry import TelemetrySetup


class Collector(
    trace_service_pb2_grpc.TraceServiceServicer,
    metrics_service_pb2_grpc.MetricsServiceServicer,
):
    """Keeps every OTLP export request it is sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.traces.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    def spans(self) -> list[Any]:
        with self.lock:
            return [
                span
                for request in self.traces
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]

    def metric_names(self) -> set[str]:
        with self.lock:
            return {
                metric.name
                for request in self.metrics
                for resource in request.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
            }

    def service_names(self) -> set[str]:
        with self.lock:
            return {
                attribute.value.string_value
                for request in self.traces
                for resource in request.resource_spans
                for attribute in resource.resource.attributes
                if attribute.key == "service.name"
            }


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def eventually(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_spans_and_metrics_reach_an_otlp_collector(
    collector: tuple[Collector, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received, port = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{LOOPBACK}:{port}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "rlx-under-test")
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)

    with ServerProcess(write_policy(tmp_path / "config"), tmp_path) as server:
        with server.channel() as channel:
            entry = ratelimit_pb2.RateLimitDescriptor.Entry(
                key="generic_key", value="bkt-named"
            )
            rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
                rls_pb2.RateLimitRequest(
                    domain=DOMAIN,
                    descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])],
                ),
                metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),),
                timeout=5,
            )

        def exported() -> bool:
            traced = [s for s in received.spans() if s.trace_id.hex() == trace_id]
            return len(traced) == 2 and "ratelimit_ext.decisions" in (
                received.metric_names()
            )

        assert eventually(exported), server.describe()

    spans = {s.name: s for s in received.spans() if s.trace_id.hex() == trace_id}
    server_span = spans["envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"]
    assert server_span.parent_span_id.hex() == parent
    assert spans["ratelimit_ext.store.hit"].parent_span_id == server_span.span_id
    assert received.service_names() == {"rlx-under-test"}
    assert "ratelimit_ext.store.duration" in received.metric_names()


# --- which variables switch what on --------------------------------------------------

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}


@pytest.mark.parametrize(
    ("environ", "metrics", "traces"),
    [
        ({}, False, False),
        (ENDPOINT, True, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, False, True),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4317"}, True, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, False, True),
        ({"OTEL_METRICS_EXPORTER": "otlp,prometheus"}, True, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, True, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False, False),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, False, False),
    ],
)
def test_setup_from_the_standard_variables(
    environ: dict[str, str], metrics: bool, traces: bool
) -> None:
    setup = TelemetrySetup.from_environ(environ)

    assert (setup.otlp_metrics, setup.otlp_traces) == (metrics, traces)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: zipkin"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            "exports OTLP over grpc",
        ),
    ],
)
def test_setup_refuses_what_it_cannot_do(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TelemetrySetup.from_environ(environ)
