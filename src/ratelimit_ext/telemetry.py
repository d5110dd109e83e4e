"""Telemetry: the only module that talks to OpenTelemetry and its exporters.

Instruments are created once, with units and low-cardinality attributes only
(domain names from the policy, result codes, store names); request-supplied
values such as descriptor values or API keys never become attributes.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from ratelimit_ext import __version__

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


class Telemetry:
    """Named recording calls over an OpenTelemetry meter."""

    def __init__(
        self, provider: metrics.MeterProvider, store_name: str = "memory"
    ) -> None:
        self._provider = provider
        self._store = {"store": store_name}
        self._bypass_attributes: dict[tuple[str, str], dict[str, str]] = {}
        meter = provider.get_meter("ratelimit_ext", __version__)
        # The hottest instrument: counted in a plain dict on the request path
        # and handed to OpenTelemetry only when a reader collects.
        self._decision_counts: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(
            "ratelimit_ext.decisions",
            callbacks=[self._observe_decisions],
            unit="{decision}",
            description="Rate-limit decisions by domain and overall code",
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
            description="Store calls that failed",
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
        self._authz = meter.create_counter(
            "ratelimit_ext.authz.checks",
            unit="{check}",
            description="Authorization checks by result",
        )
        self._bypass_uses = meter.create_counter(
            "ratelimit_ext.bypass.uses",
            unit="{use}",
            description="Limits lifted (full) or scaled (partial) by a bypass grant "
            "or emergency level, by mode and subject kind",
        )
        self._reloads = meter.create_counter(
            "ratelimit_ext.policy.reloads",
            unit="{reload}",
            description="Changed policy files found on disk, by outcome (ok, failed)",
        )
        self._policy_in_force: tuple[str, float] | None = None
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

    def record_decision(self, domain: str, code: str) -> None:
        key = (domain, code)
        self._decision_counts[key] = self._decision_counts.get(key, 0) + 1

    def _observe_decisions(
        self, _options: metrics.CallbackOptions
    ) -> list[metrics.Observation]:
        counts = dict(self._decision_counts)  # one atomic copy under the GIL
        return [
            metrics.Observation(total, {"domain": domain, "code": code})
            for (domain, code), total in counts.items()
        ]

    def record_bypass(self, mode: str, kind: str) -> None:
        """One limited descriptor (or Check) let through or scaled by a bypass."""
        key = (mode, kind)
        attributes = self._bypass_attributes.get(key)
        if attributes is None:
            attributes = {"mode": mode, "kind": kind}
            self._bypass_attributes[key] = attributes
        self._bypass_uses.add(1, attributes)

    def record_store(self, seconds: float, *, ok: bool) -> None:
        self._store_latency.record(seconds, self._store)
        if not ok:
            self._store_errors.add(1, self._store)

    def record_rpc_error(self, method: str, status: str) -> None:
        self._rpc_errors.add(1, {"method": method, "status": status})

    def record_failure_policy(self, policy: str, descriptors: int) -> None:
        self._failure_policy.add(descriptors, {"policy": policy})

    def record_authz(self, result: str) -> None:
        self._authz.add(1, {"result": result})

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

    def shutdown(self) -> None:
        if isinstance(self._provider, MeterProvider):
            self._provider.shutdown()


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

    def provider(self) -> MeterProvider:
        resource = Resource.create({"service.name": "ratelimit-ext"})
        return MeterProvider(
            resource=resource,
            metric_readers=[self.reader],
            exemplar_filter=AlwaysOffExemplarFilter(),
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
