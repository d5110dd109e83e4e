"""Process wiring: build the parts from settings, serve, and shut down cleanly.

This is the only place that knows every part. It loads the policy, opens the
store, starts telemetry, registers the gRPC services on one port and, on
SIGTERM or SIGINT, turns health to NOT_SERVING, lets in-flight calls finish
within the grace period, closes the store and returns.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ratelimit_ext.admin.server import AdminServer, build_admin
from ratelimit_ext.admin.service import ServerRuntime
from ratelimit_ext.admin.settings import AdminSettings
from ratelimit_ext.authn import AuthSettings
from ratelimit_ext.counting import CountingSettings, LimitCounter
from ratelimit_ext.decision import DecisionEngine
from ratelimit_ext.errors import StoreError
from ratelimit_ext.logs import FORMATS
from ratelimit_ext.policy.compiled import ActivePolicy, CompiledPolicy
from ratelimit_ext.policy.loader import load_policy
from ratelimit_ext.policy.reload import PolicyReloader
from ratelimit_ext.service import authorization, ratelimit
from ratelimit_ext.service.handlers import unary_service
from ratelimit_ext.service.limits import RequestLimits
from ratelimit_ext.store.base import Store
from ratelimit_ext.store.coalesce import CoalescingStore
from ratelimit_ext.store.guard import GuardedStore, GuardSettings
from ratelimit_ext.store.url import open_store, redact_url
from ratelimit_ext.telemetry import PrometheusEndpoint, TelemetrySetup, build_telemetry

logger = logging.getLogger(__name__)


def split_host_port(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port).

    A malformed value raises ``ValueError`` naming the flag.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class ServeSettings:
    config: Path
    listen: str = "127.0.0.1:8081"
    store: str = "memory"
    metrics_listen: str | None = "127.0.0.1:9090"
    shadow_mode: bool = False
    ratelimit_headers: bool = False
    watch: bool = True
    grace_seconds: float = 10.0
    counting: CountingSettings = field(default_factory=CountingSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    coalesce_window: float | None = 0.0
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    workers: int = 1
    event_loop: str = "uvloop"
    reuse_port: bool = False
    admin: AdminSettings = field(default_factory=AdminSettings)
    log_format: str = "text"

    def __post_init__(self) -> None:
        split_host_port(self.listen, "--listen")
        if self.metrics_listen is not None:
            split_host_port(self.metrics_listen, "--metrics-listen")
        if self.grace_seconds < 0:
            raise ValueError("--grace must not be negative")
        if self.log_format not in FORMATS:
            raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}")
        _check_workers(self)
        if self.admin.listen is not None and self.admin.listen == self.listen:
            raise ValueError("--admin-listen must differ from --listen")


class Sidecar:
    """The running server: its parts and its lifecycle.

    ``telemetry`` says where metrics and spans go besides ``/metrics``; by
    default the standard ``OTEL_*`` environment variables decide.
    """

    def __init__(
        self, settings: ServeSettings, *, telemetry: TelemetrySetup | None = None
    ) -> None:
        self.settings = settings
        setup = telemetry if telemetry is not None else TelemetrySetup.from_environ()
        self.policy = ActivePolicy(CompiledPolicy.build(load_policy(settings.config)))
        self._metrics = _metrics_endpoint(settings.metrics_listen)
        self.store = _remote_wrappers(open_store(settings.store), settings)
        self.telemetry = build_telemetry(self.store.name, self._metrics, setup)
        counter = LimitCounter(self.store, self.telemetry, settings.counting)
        if counter.cache is not None:
            self.telemetry.watch_overlimit_cache(counter.cache)
        self.engine = DecisionEngine(
            self.policy, counter, self.telemetry, shadow_mode=settings.shadow_mode
        )
        loaded = self.policy.current.policy
        self.telemetry.record_policy_in_force(loaded.digest, time.time())
        self.reloader = (
            PolicyReloader(settings.config, self.policy, self.telemetry)
            if settings.watch
            else None
        )
        self.health = health.aio.HealthServicer()
        self.server = self._build_server()
        self.port = 0
        self.admin = self._build_admin()

    def _build_server(self) -> grpc.aio.Server:
        # Off unless workers share the port: a port already taken is an error.
        reuse_port = 1 if self.settings.reuse_port else 0
        server = grpc.aio.server(options=[("grpc.so_reuseport", reuse_port)])
        rls = ratelimit.RateLimitServicer(
            self.engine,
            self.telemetry,
            limits=self.settings.limits,
            response_headers=self.settings.ratelimit_headers,
        )
        authz = authorization.AuthorizationServicer(
            self.policy, self.engine, self.telemetry, self.settings.auth
        )
        # A server span per call when tracing is on; else the methods as they are.
        traced = self.telemetry.traced
        should_rate_limit = traced(
            f"{ratelimit.SERVICE_NAME}/{ratelimit.METHOD}", rls.ShouldRateLimit
        )
        check = traced(
            f"{authorization.SERVICE_NAME}/{authorization.METHOD}", authz.Check
        )
        server.add_generic_rpc_handlers(
            (
                unary_service(
                    ratelimit.SERVICE_NAME,
                    {ratelimit.METHOD: (should_rate_limit, rls_pb2.RateLimitRequest)},
                ),
                unary_service(
                    authorization.SERVICE_NAME,
                    {authorization.METHOD: (check, external_auth_pb2.CheckRequest)},
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                ratelimit.SERVICE_NAME,
                authorization.SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        return server

    def _build_admin(self) -> AdminServer | None:
        """The admin API on its own port (``--admin-listen``), if enabled."""
        if self.settings.admin.listen is None:
            return None
        runtime = ServerRuntime(
            self.policy,
            self.engine,
            self.store,
            self.settings.store,
            self.reloader,
            self.settings.shadow_mode,
        )
        return build_admin(
            self.settings.admin,
            self.settings.config,
            runtime=runtime,
            reuse_port=self.settings.reuse_port,
            telemetry=self.telemetry,
        )

    async def start(self) -> None:
        await self._warm_store()
        if self.reloader is not None:
            await self.reloader.start()
        self.port = self.server.add_insecure_port(self.settings.listen)
        await self.server.start()
        if self.admin is not None:
            await self.admin.start()
        _freeze_startup_objects()
        for service in ("", ratelimit.SERVICE_NAME, authorization.SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        policy = self.policy.current.policy
        logger.info(
            "serving on %s (port %d), store %s, %d domains, %d API keys, policy %s,"
            " event loop %s",
            self.settings.listen,
            self.port,
            redact_url(self.settings.store),
            len(policy.domains),
            len(policy.api_keys),
            policy.digest[:12],
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    async def _warm_store(self) -> None:
        """Connect to the store before SERVING; a store that is down is logged
        and the server serves anyway, under the failure policy."""
        started = time.perf_counter()
        try:
            await self.store.warm()
        except StoreError as exc:
            logger.warning("store not ready at start, serving anyway: %s", exc)
            return
        logger.info(
            "store %s ready in %.0f ms",
            self.store.name,
            (time.perf_counter() - started) * 1000,
        )

    async def stop(self) -> None:
        logger.info("shutting down, grace %.1fs", self.settings.grace_seconds)
        if self.reloader is not None:
            await self.reloader.stop()
        if self.admin is not None:
            await self.admin.stop(1.0)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds)
        await self.store.close()
        self.telemetry.shutdown()
        if self._metrics is not None:
            self._metrics.close()
        logger.info("stopped")


def _freeze_startup_objects() -> None:
    """Take what start-up built (modules, protos, the policy) out of the GC's way.

    A full collection of the cyclic garbage collector walks every tracked
    object; with grpc, protobuf, OpenTelemetry and redis-py loaded that took
    about 90 ms here, a stall longer than Envoy's whole 20 ms budget for
    every call in flight. Frozen objects are skipped by the collector (they
    are still freed by reference counting), so later collections only walk
    what requests allocate.
    """
    gc.collect()
    gc.freeze()
    logger.debug("froze %d start-up objects", gc.get_freeze_count())


def _remote_wrappers(store: Store, settings: ServeSettings) -> Store:
    """Remote stores get coalescing, a deadline and a circuit breaker.

    The memory store answers without I/O and needs none of them.
    """
    if store.name == "memory":
        return store
    if settings.coalesce_window is not None:
        store = CoalescingStore(store, settings.coalesce_window)
    return GuardedStore(store, settings.guard)


def _check_workers(settings: ServeSettings) -> None:
    """``--workers`` above 1 needs a shared store and fixed, known ports."""
    if settings.workers < 1:
        raise ValueError("--workers must be at least 1")
    if settings.workers == 1:
        return
    if settings.store.strip() in ("memory", "memory://"):
        raise ValueError(
            "--workers above 1 needs a shared store (redis:// or redis+cluster://):"
            " with the memory store every worker would count alone, multiplying"
            f" every limit by {settings.workers}"
        )
    if split_host_port(settings.listen, "--listen")[1] == 0:
        raise ValueError("--workers above 1 needs a fixed --listen port, not 0")
    if settings.metrics_listen is not None:
        port = split_host_port(settings.metrics_listen, "--metrics-listen")[1]
        if port and port + settings.workers - 1 > 65535:
            raise ValueError(
                f"--metrics-listen: worker metrics ports {port}.."
                f"{port + settings.workers - 1} go past 65535"
            )


def _metrics_endpoint(listen: str | None) -> PrometheusEndpoint | None:
    if listen is None:
        return None
    host, port = split_host_port(listen, "--metrics-listen")
    return PrometheusEndpoint(host, port)


async def serve(
    settings: ServeSettings, on_serving: Callable[[], None] | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    ``on_serving`` is called once the port is open and health is SERVING.
    """
    sidecar = Sidecar(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await sidecar.start()
        if on_serving is not None:
            on_serving()
        await stopping.wait()
    finally:
        await sidecar.stop()
