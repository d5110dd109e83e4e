"""Telemetry: the only module that talks to OpenTelemetry and its exporters.

Instruments are created once, with units and low-cardinality attributes only
(domain names from the policy, configured rule names, result codes, store
names, error class names); request-supplied values such as descriptor values
or API keys never become attributes, except for the rules an operator marks
``detailed_metric: true``, whose descriptor values are capped per rule.

The request path stays cheap: what it records per call is counted in plain
dicts and handed to OpenTelemetry only when a reader collects (observable
instruments); the SDK's synchronous instruments (several microseconds a call)
are kept for the store latency histogram and for rare events. Tracing is off
unless an exporter is configured; then the gRPC methods are wrapped in server
spans (continuing the caller's W3C or B3 trace) and each store call becomes a
child span. Off, it costs an attribute test per recording and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, start_http_server

from ratelimit_ext import __version__
from ratelimit_ext.errors import StoreError

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Seconds; a decision's store time is normally well under Envoy's 20 ms."""

UNNAMED_RULE = "_unnamed"
"""Rule label of a limit without a configured ``name`` (and of overrides)."""
DETAIL_VALUES_CAP = 1000
"""Distinct ``descriptor`` values kept per ``detailed_metric`` rule."""
OVERFLOW = "_overflow"
"""The ``descriptor`` value of everything past ``DETAIL_VALUES_CAP``."""

# Server span status per the RPC semantic conventions: these codes are the
# server's failure; the others (INVALID_ARGUMENT, ...) are the caller's.
_SERVER_ERRORS = frozenset(
    {
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    }
)
_OTLP_PROTOCOLS = ("grpc",)
_TRACE_HEADERS = frozenset(
    {
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-flags",
    }
)
"""The metadata keys the propagators read (W3C trace context, B3)."""

Behaviour = TypeVar("Behaviour", bound=Callable[..., Awaitable[Any]])


class _CountsHits(Protocol):
    """The over-limit cache as telemetry sees it."""

    @property
    def hits(self) -> int: ...

    def __len__(self) -> int: ...


class Telemetry:
    """Named recording calls over an OpenTelemetry meter (and tracer)."""

    def __init__(
        self,
        provider: metrics.MeterProvider,
        store_name: str = "memory",
        *,
        tracer_provider: TracerProvider | None = None,
        detail_values_cap: int = DETAIL_VALUES_CAP,
    ) -> None:
        self._provider = provider
        self._tracer_provider = tracer_provider
        self._tracer = (
            tracer_provider.get_tracer("ratelimit_ext", __version__)
            if tracer_provider is not None
            else None
        )
        self._propagator = CompositePropagator(
            [B3MultiFormat(), TraceContextTextMapPropagator()]
        )
        self._store = {"store": store_name}
        self._store_span_attributes = {"ratelimit_ext.store": store_name}
        self._detail_cap = detail_values_cap
        self._details: dict[tuple[str, str], set[str]] = {}
        self._cache: _CountsHits | None = None
        self._policy_in_force: tuple[str, float] | None = None
        # Counted on the request path in plain dicts, handed to OpenTelemetry
        # only when a reader collects.
        self._decision_counts: dict[tuple[str, str], int] = {}
        self._rule_counts: dict[tuple[str, str, str, str | None], int] = {}
        self._near_counts: dict[tuple[str, str], int] = {}
        self._shadow_counts: dict[tuple[str, str], int] = {}
        self._authz_counts: dict[str, int] = {}
        self._bypass_counts: dict[tuple[str, str], int] = {}
        self._create_instruments(provider.get_meter("ratelimit_ext", __version__))

    def _create_instruments(self, meter: metrics.Meter) -> None:
        observed = (
            (
                "ratelimit_ext.decisions",
                self._observe_decisions,
                "{decision}",
                "Rate-limit decisions by domain and overall code",
            ),
            (
                "ratelimit_ext.rule.decisions",
                self._observe_rules,
                "{descriptor}",
                "Limited descriptors by domain, rule name and code (plus the"
                " descriptor's values for detailed_metric rules)",
            ),
            (
                "ratelimit_ext.rule.near_limit",
                self._observe_near,
                "{descriptor}",
                "Admitted descriptors left with at most 10% of their limit",
            ),
            (
                "ratelimit_ext.shadow.would_block",
                self._observe_shadow,
                "{descriptor}",
                "Descriptors over their limit but let through by shadow mode",
            ),
            (
                "ratelimit_ext.authz.checks",
                self._observe_authz,
                "{check}",
                "Authorization checks by result (allow, deny) and reason",
            ),
            (
                "ratelimit_ext.bypass.uses",
                self._observe_bypass,
                "{use}",
                "Limits lifted (full) or scaled (partial) by a bypass grant "
                "or emergency level, by mode and subject kind",
            ),
            (
                "ratelimit_ext.overlimit_cache.hits",
                self._observe_cache_hits,
                "{hit}",
                "Descriptors refused from the local over-limit cache",
            ),
        )
        for name, callback, unit, description in observed:
            meter.create_observable_counter(
                name, callbacks=[callback], unit=unit, description=description
            )
        meter.create_observable_gauge(
            "ratelimit_ext.overlimit_cache.entries",
            callbacks=[self._observe_cache_entries],
            unit="{entry}",
            description="Counters the over-limit cache knows to be over",
        )
        self._store_latency = meter.create_histogram(
            "ratelimit_ext.store.duration",
            unit="s",
            description="Time spent in the counter store per decision",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._store_errors = meter.create_counter(
            "ratelimit_ext.store.errors",
            unit="{error}",
            description="Store calls that failed, by error class",
        )
        self._rpc_errors = meter.create_counter(
            "ratelimit_ext.rpc.errors",
            unit="{call}",
            description="Calls answered with a gRPC error status",
        )
        self._failure_policy = meter.create_counter(
            "ratelimit_ext.failure_policy.decisions",
            unit="{descriptor}",
            description="Descriptors decided by the failure policy (store down)",
        )
        self._reloads = meter.create_counter(
            "ratelimit_ext.policy.reloads",
            unit="{reload}",
            description="Changed policy files found on disk, by outcome (ok, failed)",
        )
        self._admin_calls = meter.create_counter(
            "ratelimit_ext.admin.calls",
            unit="{call}",
            description="Admin API calls by method and result (a gRPC status name)",
        )
        meter.create_observable_gauge(
            "ratelimit_ext.policy.loaded",
            callbacks=[self._observe_policy],
            unit="s",
            description="When the policy in force was loaded (Unix time), by digest",
        )

    @classmethod
    def disabled(cls) -> Telemetry:
        """Instruments that record nothing and cost next to nothing."""
        return cls(metrics.NoOpMeterProvider())

    @property
    def tracing(self) -> bool:
        return self._tracer is not None

    # --- decisions ------------------------------------------------------------

    def record_decision(self, domain: str, code: str) -> None:
        key = (domain, code)
        self._decision_counts[key] = self._decision_counts.get(key, 0) + 1
        if self._tracer is not None:
            trace.get_current_span().set_attributes(
                {"ratelimit_ext.domain": domain, "ratelimit_ext.code": code}
            )

    def record_rule(
        self, domain: str, rule: str | None, code: str, detail: str | None = None
    ) -> None:
        """One limited descriptor's answer; ``detail`` only for detailed rules."""
        rule = rule or UNNAMED_RULE
        if detail is not None:
            detail = self._capped(domain, rule, detail)
        key = (domain, rule, code, detail)
        self._rule_counts[key] = self._rule_counts.get(key, 0) + 1

    def record_near_limit(self, domain: str, rule: str | None) -> None:
        key = (domain, rule or UNNAMED_RULE)
        self._near_counts[key] = self._near_counts.get(key, 0) + 1

    def record_shadow_block(self, domain: str, rule: str | None) -> None:
        """A descriptor over its limit that shadow mode let through."""
        key = (domain, rule or UNNAMED_RULE)
        self._shadow_counts[key] = self._shadow_counts.get(key, 0) + 1

    def _capped(self, domain: str, rule: str, detail: str) -> str:
        seen = self._details.get((domain, rule))
        if seen is None:
            seen = self._details[(domain, rule)] = set()
        if detail in seen:
            return detail
        if len(seen) >= self._detail_cap:
            return OVERFLOW
        seen.add(detail)
        return detail

    def _observe_decisions(self, _options: CallbackOptions) -> list[Observation]:
        counts = dict(self._decision_counts)  # one atomic copy under the GIL
        return [
            Observation(total, {"domain": domain, "code": code})
            for (domain, code), total in counts.items()
        ]

    def _observe_rules(self, _options: CallbackOptions) -> list[Observation]:
        observations = []
        for (domain, rule, code, detail), total in dict(self._rule_counts).items():
            attributes = {"domain": domain, "rule": rule, "code": code}
            if detail is not None:
                attributes["descriptor"] = detail
            observations.append(Observation(total, attributes))
        return observations

    def _observe_near(self, _options: CallbackOptions) -> list[Observation]:
        return _by_rule(self._near_counts)

    def _observe_shadow(self, _options: CallbackOptions) -> list[Observation]:
        return _by_rule(self._shadow_counts)

    # --- authorization, bypass --------------------------------------------------

    def record_authz(self, reason: str) -> None:
        """One Check: ``allowed``, or denied for ``missing_key``, ``unknown_key``
        or ``over_limit``."""
        self._authz_counts[reason] = self._authz_counts.get(reason, 0) + 1
        if self._tracer is not None:
            trace.get_current_span().set_attribute("ratelimit_ext.authz", reason)

    def _observe_authz(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(total, {"result": _authz_result(reason), "reason": reason})
            for reason, total in dict(self._authz_counts).items()
        ]

    def record_bypass(self, mode: str, kind: str) -> None:
        """One limited descriptor (or Check) let through or scaled by a bypass."""
        key = (mode, kind)
        self._bypass_counts[key] = self._bypass_counts.get(key, 0) + 1

    def _observe_bypass(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(total, {"mode": mode, "kind": kind})
            for (mode, kind), total in dict(self._bypass_counts).items()
        ]

    # --- the store ----------------------------------------------------------------

    def record_store(self, seconds: float, error: BaseException | None = None) -> None:
        """One store call: its time, and the error that ended it, if any."""
        self._store_latency.record(seconds, self._store)
        error_class = None if error is None else store_error_class(error)
        if error_class is not None:
            self._store_errors.add(1, {**self._store, "error": error_class})
        if self._tracer is not None:
            self._store_span(seconds, error_class)

    def _store_span(self, seconds: float, error_class: str | None) -> None:
        """The store call as a child of the current span, after the fact;
        nothing when that span is not recorded (the caller did not sample)."""
        assert self._tracer is not None
        if not trace.get_current_span().is_recording():
            return
        end = time.time_ns()
        span = self._tracer.start_span(
            "ratelimit_ext.store.hit",
            kind=SpanKind.CLIENT,
            attributes=self._store_span_attributes,
            start_time=end - int(seconds * 1e9),
        )
        if error_class is not None:
            span.set_attribute("error.type", error_class)
            span.set_status(Status(StatusCode.ERROR, error_class))
        span.end(end_time=end)

    def watch_overlimit_cache(self, cache: _CountsHits) -> None:
        """Export the over-limit cache's hits and size from now on."""
        self._cache = cache

    def _observe_cache_hits(self, _options: CallbackOptions) -> list[Observation]:
        if self._cache is None:
            return []
        return [Observation(self._cache.hits, self._store)]

    def _observe_cache_entries(self, _options: CallbackOptions) -> list[Observation]:
        if self._cache is None:
            return []
        return [Observation(len(self._cache), self._store)]

    def record_failure_policy(self, policy: str, descriptors: int) -> None:
        self._failure_policy.add(descriptors, {"policy": policy})

    # --- calls, admin, policy ----------------------------------------------------

    def record_rpc_error(self, method: str, status: str) -> None:
        self._rpc_errors.add(1, {"method": method, "status": status})

    def record_admin_call(self, method: str, result: str) -> None:
        """``method``: a known admin method name; ``result``: a status name."""
        self._admin_calls.add(1, {"method": method, "result": result})

    def record_policy_reload(self, outcome: str) -> None:
        self._reloads.add(1, {"outcome": outcome})

    def record_policy_in_force(self, digest: str, loaded_at: float) -> None:
        """The policy now served; only its 12-character digest prefix is exported."""
        self._policy_in_force = (digest[:12], loaded_at)

    def _observe_policy(self, _options: CallbackOptions) -> list[Observation]:
        if self._policy_in_force is None:
            return []
        digest, loaded_at = self._policy_in_force

        return [Observation(loaded_at, {"digest": digest})]

    # --- tracing ---------------------------------------------------------------------

    def traced(self, name: str, behaviour: Behaviour) -> Behaviour:
        """``behaviour`` (a unary gRPC method) inside a server span, if tracing.

        ``name`` is ``service/method``. The span continues the trace in the
        call's metadata (W3C ``traceparent``/``tracestate``, B3 multi or
        single header) and ends with the call's gRPC status. Without tracing
        ``behaviour`` itself comes back: nothing is added to the call.
        """
        tracer = self._tracer
        if tracer is None:
            return behaviour
        service, _, method = name.rpartition("/")
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
        }
        extract = self._propagator.extract

        async def traced_call(request: Any, context: Any) -> Any:
            parent = extract(_trace_carrier(context.invocation_metadata()), Context())
            with tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    response = await behaviour(request, context)
                except BaseException as exc:
                    _end_status(span, context.code(), exc)
                    raise
                _end_status(span, context.code(), None)
                return response

        return traced_call  # type: ignore[return-value]

    def shutdown(self) -> None:
        """Flush and stop the exporters (spans still buffered are sent)."""
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if isinstance(self._provider, MeterProvider):
            self._provider.shutdown()


def _authz_result(reason: str) -> str:
    return "allow" if reason == "allowed" else "deny"


def _by_rule(counts: dict[tuple[str, str], int]) -> list[Observation]:
    return [
        Observation(total, {"domain": domain, "rule": rule})
        for (domain, rule), total in dict(counts).items()
    ]


def store_error_class(error: BaseException) -> str:
    """The class name of what made the store fail, below any ``StoreError``s.

    ``StoreError`` wrappers (a coalesced batch, the guard) are followed down
    their ``__cause__``: ``ConnectionError``, ``TimeoutError``, ``CircuitOpen``.
    """
    cause = error
    while isinstance(cause, StoreError) and cause.__cause__ is not None:
        cause = cause.__cause__
    return type(cause).__name__


def _trace_carrier(metadata: Any) -> dict[str, str]:
    """The trace headers of a call's metadata (keys are lower case in gRPC)."""
    return {
        key: value
        for key, value in metadata or ()
        if key in _TRACE_HEADERS and isinstance(value, str)
    }


def _end_status(span: trace.Span, code: Any, error: BaseException | None) -> None:
    """The call's gRPC status on its span, and an error status if it is ours.

    ``code`` is the status the servicer set (``grpc.StatusCode``, whose value
    is ``(number, text)``), or ``None``: OK, or an exception gRPC will answer
    with UNKNOWN (CANCELLED when the caller went away).
    """
    if code is not None:
        name, number = code.name, code.value[0]
    elif error is None:
        name, number = "OK", 0
    elif isinstance(error, asyncio.CancelledError):
        name, number = "CANCELLED", 1
    else:
        name, number = "UNKNOWN", 2
    span.set_attribute("rpc.grpc.status_code", number)
    if name in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, name))


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the span in force, for log lines."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(
        context.span_id
    )


# --- where telemetry goes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelemetrySetup:
    """Where metrics and spans go besides the Prometheus endpoint.

    ``from_environ`` reads the standard OpenTelemetry variables. Tests and
    tools pass ``span_exporter`` instead: spans go to it synchronously.
    """

    otlp_metrics: bool = False
    otlp_traces: bool = False
    span_exporter: SpanExporter | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> TelemetrySetup:
        """OTLP for a signal when its exporter variable names ``otlp``, or when
        it is unset and an OTLP endpoint is; ``ValueError`` for what we lack."""

        def value(name: str) -> str:
            return environ.get(name, "").strip().lower()

        if value("OTEL_SDK_DISABLED") == "true":
            return cls()
        traces = _wants_otlp("OTEL_TRACES_EXPORTER", value, ("otlp", "none"), "TRACES")
        otlp_metrics = _wants_otlp(
            "OTEL_METRICS_EXPORTER", value, ("otlp", "prometheus", "none"), "METRICS"
        )
        for signal, wanted in (("TRACES", traces), ("METRICS", otlp_metrics)):
            protocol = value(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or value(
                "OTEL_EXPORTER_OTLP_PROTOCOL"
            )
            if wanted and protocol and protocol not in _OTLP_PROTOCOLS:
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported;"
                    " ratelimit-ext exports OTLP over grpc"
                )
        return cls(otlp_metrics=otlp_metrics, otlp_traces=traces)


def _wants_otlp(
    variable: str,
    value: Callable[[str], str],
    known: tuple[str, ...],
    signal: str,
) -> bool:
    names = [name.strip() for name in value(variable).split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"{variable}: {', '.join(unknown)} not supported (use {', '.join(known)})"
        )
    if names:
        return "otlp" in names
    endpoint = value("OTEL_EXPORTER_OTLP_ENDPOINT") or value(
        f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
    )
    return bool(endpoint)


def build_telemetry(
    store_name: str,
    prometheus: PrometheusEndpoint | None,
    setup: TelemetrySetup,
) -> Telemetry:
    """Telemetry over the readers and exporters that ``setup`` asks for.

    With no Prometheus endpoint and no OTLP metrics the meter is a no-op;
    without a span exporter there is no tracer at all.
    """
    resource = service_resource()
    readers: list[MetricReader] = []
    if prometheus is not None:
        readers.append(prometheus.reader)
    if setup.otlp_metrics:
        readers.append(_otlp_metric_reader())
    meter_provider: metrics.MeterProvider = (
        MeterProvider(
            resource=resource,
            metric_readers=readers,
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        if readers
        else metrics.NoOpMeterProvider()
    )
    tracer_provider = None
    if setup.span_exporter is not None or setup.otlp_traces:
        tracer_provider = TracerProvider(resource=resource)
        if setup.span_exporter is not None:
            tracer_provider.add_span_processor(SimpleSpanProcessor(setup.span_exporter))
        else:
            tracer_provider.add_span_processor(BatchSpanProcessor(_otlp_spans()))
    if setup.otlp_metrics or setup.otlp_traces:
        logger.info(
            "OpenTelemetry export over OTLP/grpc: metrics %s, traces %s",
            "on" if setup.otlp_metrics else "off",
            "on" if setup.otlp_traces else "off",
        )
    return Telemetry(meter_provider, store_name, tracer_provider=tracer_provider)


def service_resource() -> Resource:
    """``service.*`` attributes; ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` win over ours."""
    detected = Resource.create()
    ours: dict[str, str] = {
        "service.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
    }
    name = str(detected.attributes.get("service.name", ""))
    if not name or name.startswith("unknown_service"):
        detected = detected.merge(Resource({"service.name": "ratelimit-ext"}))
    missing = {k: v for k, v in ours.items() if k not in detected.attributes}

    return detected.merge(Resource(missing))


def _otlp_metric_reader() -> MetricReader:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter,
    )
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _otlp_spans() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter,
    )

    exporter: SpanExporter = OTLPSpanExporter()
    return exporter


class PrometheusEndpoint:
    """Serves the metrics of one ``MeterProvider`` on an HTTP port."""

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.reader = PrometheusMetricReader(registry=self.registry)
        self._server: Any
        self._server, self._thread = start_http_server(
            port, addr=host, registry=self.registry
        )
        logger.info("metrics listening on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
