"""What telemetry costs per call: the servicers driven in process, no network.

    python perf/bench_telemetry.py [--calls N] [--repeat R] [--json]

Builds a ``Sidecar`` (memory store, nothing listening but the metrics port)
three times: metrics off, metrics on (Prometheus), and metrics plus tracing
(spans to an exporter that drops them). Each build answers the same
``ShouldRateLimit`` (two limited descriptors) and ``Check`` (known key, tier
enforced) requests straight through the servicer methods, so the numbers are
the Python work of one call, without gRPC's transport. Rounds of ``--calls``
calls alternate between the builds, and the best of ``--repeat`` rounds is
reported: CPU microseconds of the event loop's thread per call, with the
difference to the metrics-off build. Then each recording call of a
metrics-on ``Telemetry`` alone, which a busy machine disturbs far less.

Run it against another tree with ``PYTHONPATH=that/src``; a tree without
tracing support reports only the first two builds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import socket
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.server import ServeSettings, Sidecar
from ratelimit_ext.service import authorization, ratelimit

POLICY = """\
domain: bench
tiers:
  - name: pro
    limits: [{unit: second, requests_per_unit: 1000000000}]
descriptors:
  - key: generic_key
    value: bench
    rate_limit: {unit: second, requests_per_unit: 1000000000, name: bench}
  - key: user_id
    rate_limit: {unit: second, requests_per_unit: 1000000000}
"""

KEYS = f"""\
api_keys:
  - sha256: {hash_key("bench-key")}
    identity: bench-user
    tier: pro
"""


class _Context:
    """The parts of ``grpc.aio.ServicerContext`` the servicers use."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def code(self) -> None:
        return None

    async def abort(self, code: object, message: str) -> None:
        raise RuntimeError(f"aborted: {code} {message}")


class _DropSpans:
    """A span exporter that keeps nothing."""

    def export(self, spans: object) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rls_request() -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    descriptor = ratelimit_pb2.RateLimitDescriptor
    return rls_pb2.RateLimitRequest(
        domain="bench",
        descriptors=[
            descriptor(entries=[entry(key="generic_key", value="bench")]),
            descriptor(entries=[entry(key="user_id", value="u1")]),
        ],
    )


def _check_request() -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers["x-api-key"] = "bench-key"
    request.attributes.context_extensions["ratelimit_domain"] = "bench"
    return request


def _sidecar(config: Path, metrics: bool, tracing: bool) -> Sidecar:
    settings = ServeSettings(
        config=config,
        listen="127.0.0.1:0",
        metrics_listen=f"127.0.0.1:{_free_port()}" if metrics else None,
        watch=False,
        admin=_no_admin(),
    )
    if not tracing:
        return Sidecar(settings)
    from ratelimit_ext.telemetry import TelemetrySetup  # newer trees only

    return Sidecar(settings, telemetry=TelemetrySetup(span_exporter=_DropSpans()))


def _no_admin() -> Any:
    from ratelimit_ext.admin.settings import AdminSettings

    return AdminSettings(listen=None)


async def _per_call(
    call: Callable[[Any, Any], Awaitable[Any]], request: Any, calls: int
) -> float:
    """CPU microseconds of this thread per call (less noisy than wall time)."""
    context = _Context(
        (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)
    )
    gc.collect()
    gc.disable()  # a collection landing in one round is noise, not cost
    try:
        started = time.thread_time()
        for _ in range(calls):
            await call(request, context)
        return (time.thread_time() - started) / calls * 1e6
    finally:
        gc.enable()


def _calls(sidecar: Sidecar) -> dict[str, tuple[Any, Any]]:
    """Method -> (behaviour as the server registers it, request)."""
    rls = ratelimit.RateLimitServicer(
        sidecar.engine, sidecar.telemetry, limits=sidecar.settings.limits
    )
    authz = authorization.AuthorizationServicer(
        sidecar.policy, sidecar.engine, sidecar.telemetry, sidecar.settings.auth
    )
    traced = getattr(sidecar.telemetry, "traced", None)  # absent in older trees
    should: Any = rls.ShouldRateLimit
    check: Any = authz.Check
    if traced is not None:
        should = traced(f"{ratelimit.SERVICE_NAME}/{ratelimit.METHOD}", should)
        check = traced(f"{authorization.SERVICE_NAME}/{authorization.METHOD}", check)
    return {
        "ShouldRateLimit": (should, _rls_request()),
        "Check": (check, _check_request()),
    }


async def _run(config: Path, builds: list[tuple[str, bool, bool]], args: Any) -> Any:
    """Rounds alternate between the builds; the best round of each counts."""
    sidecars = {name: _sidecar(config, m, t) for name, m, t in builds}
    best: dict[str, dict[str, float]] = {name: {} for name in sidecars}
    try:
        calls = {name: _calls(sidecar) for name, sidecar in sidecars.items()}
        for round_ in range(args.repeat + 1):
            for name, methods in calls.items():
                for method, (call, request) in methods.items():
                    micros = await _per_call(call, request, args.calls)
                    if round_ == 0:
                        continue  # warm-up
                    found = best[name]
                    found[method] = min(found.get(method, micros), micros)
    finally:
        for sidecar in sidecars.values():
            await sidecar.stop()
    return best


def _supports_tracing() -> bool:
    try:
        from ratelimit_ext.telemetry import TelemetrySetup  # noqa: F401
    except ImportError:
        return False
    return True


def _components() -> dict[str, float]:
    """Microseconds per recording call of a metrics-on ``Telemetry``, timed
    alone (best of 7 runs): steadier than whole calls on a busy machine."""
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from prometheus_client import CollectorRegistry

    from ratelimit_ext.telemetry import PrometheusMetricReader, Telemetry

    reader = PrometheusMetricReader(registry=CollectorRegistry())
    provider = MeterProvider(
        metric_readers=[reader], exemplar_filter=AlwaysOffExemplarFilter()
    )
    telemetry: Any = Telemetry(provider)
    calls: dict[str, Callable[[], object]] = {
        "record_decision": lambda: telemetry.record_decision("bench", "OK"),
        "record_authz": lambda: telemetry.record_authz("allowed"),
        "record_bypass": lambda: telemetry.record_bypass("full", "identity"),
    }
    store = "record_store (histogram)"
    if "ok" in inspect.signature(telemetry.record_store).parameters:  # older trees
        calls[store] = lambda: telemetry.record_store(1e-4, ok=True)
    else:
        calls[store] = lambda: telemetry.record_store(1e-4)
    if hasattr(telemetry, "record_rule"):
        from ratelimit_ext.logs import bind_request

        calls["record_rule"] = lambda: telemetry.record_rule("bench", "r", "OK")
        calls["bind_request (logs)"] = lambda: bind_request("bench", "0123abcd")
    number = 20_000
    return {
        name: min(timeit.repeat(call, number=number, repeat=7)) / number * 1e6
        for name, call in calls.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    builds = [("metrics off", False, False), ("metrics on", True, False)]
    if _supports_tracing():
        builds.append(("metrics + tracing", True, True))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp)
        (config / "bench.yaml").write_text(POLICY)
        (config / "keys.yaml").write_text(KEYS)
        results = asyncio.run(_run(config, builds, args))
    components = _components()
    if args.json:
        json.dump({"calls": results, "recording": components}, sys.stdout, indent=2)
        print()
        return 0
    base = results["metrics off"]
    print(f"{'build':<20} {'method':<16} {'us/call':>8} {'+us':>7}")
    for name, measured in results.items():
        for method, micros in measured.items():
            added = micros - base[method]
            print(f"{name:<20} {method:<16} {micros:8.2f} {added:+7.2f}")
    print(f"\n{'recording call':<37} {'us':>8}")
    for name, micros in components.items():
        print(f"{name:<37} {micros:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
