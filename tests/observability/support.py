"""The observability tests' pieces: a policy, a Prometheus scrape parser, and
a handle on an in-process sidecar with a metrics port (and spans in memory)."""

from __future__ import annotations

import textwrap
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from prometheus_client.parser import text_string_to_metric_families

from harness.ports import LOOPBACK
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.server import Sidecar

DOMAIN = "obs"
CHECK_DOMAIN = "obs-check"
API_KEY = "obs-key-5b1d9e0c7a"
"""A key the scrape, the spans and the logs must never show."""
IDENTITY = "obs-user-31c4f"

POLICY = f"""
domain: {DOMAIN}
tiers:
  - name: free
    limits: [{{unit: minute, requests_per_unit: 3}}]
descriptors:
  - key: generic_key
    value: bkt-named
    rate_limit: {{unit: minute, requests_per_unit: 4, name: bucket_named}}
  - key: generic_key
    value: bkt-shadowed
    shadow_mode: true
    rate_limit: {{unit: minute, requests_per_unit: 1, name: bucket_shadow}}
  - key: generic_key
    value: "bkt-detail-*"
    detailed_metric: true
    rate_limit: {{unit: minute, requests_per_unit: 100, name: bucket_detailed}}
  - key: generic_key
    rate_limit: {{unit: minute, requests_per_unit: 1000}}
  - key: user_id
    rate_limit: {{from_tier: true, name: per_user}}
"""

CHECK_POLICY = f"""
domain: {CHECK_DOMAIN}
tiers:
  - name: free
    limits: [{{unit: minute, requests_per_unit: 3}}]
descriptors:
  - key: user_id
    rate_limit: {{from_tier: true}}
"""


def write_policy(directory: Path, keys: dict[str, str] | None = None) -> Path:
    """The two domains plus ``api_keys`` (key -> identity, all tier free)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(textwrap.dedent(POLICY))
    (directory / "check.yaml").write_text(textwrap.dedent(CHECK_POLICY))
    entries = "".join(
        f"  - {{sha256: {hash_key(key)}, identity: {identity}, tier: free}}\n"
        for key, identity in (keys or {API_KEY: IDENTITY}).items()
    )
    (directory / "api_keys.yaml").write_text("api_keys:\n" + entries)

    return directory


# --- the Prometheus text format --------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_scrape(text: str) -> list[Sample]:
    return [
        Sample(sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def scrape(port: int) -> str:
    url = f"http://{LOOPBACK}:{port}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as answer:
        text: str = answer.read().decode()

    return text


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    found = [
        s for s in samples if s.name == name and labels.items() <= s.labels.items()
    ]
    if not found:
        raise AssertionError(f"no sample {name}{labels}")
    return sum(s.value for s in found)


# --- in-process sidecars -------------------------------------------------------------


@dataclass
class Obs:
    """A running in-process sidecar, its stubs, and where its telemetry goes."""

    sidecar: Sidecar
    channel: grpc.aio.Channel
    rls: rls_pb2_grpc.RateLimitServiceStub
    authz: external_auth_pb2_grpc.AuthorizationStub
    metrics_port: int
    spans: InMemorySpanExporter | None

    def samples(self) -> list[Sample]:
        return parse_scrape(scrape(self.metrics_port))

    async def limit(
        self,
        *entries: tuple[str, str],
        domain: str = DOMAIN,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> rls_pb2.RateLimitResponse:
        descriptor = ratelimit_pb2.RateLimitDescriptor(
            entries=[
                ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)
                for k, v in entries
            ]
        )
        request = rls_pb2.RateLimitRequest(domain=domain, descriptors=[descriptor])
        response: rls_pb2.RateLimitResponse = await self.rls.ShouldRateLimit(
            request, metadata=metadata
        )
        return response

    async def check(
        self,
        key: str | None,
        enforce: str | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> external_auth_pb2.CheckResponse:
        request = external_auth_pb2.CheckRequest()
        if key is not None:
            request.attributes.request.http.headers["x-api-key"] = key
        if enforce is not None:
            request.attributes.context_extensions["ratelimit_domain"] = enforce
        response: external_auth_pb2.CheckResponse = await self.authz.Check(
            request, metadata=metadata
        )
        return response


StartObs = Callable[..., Awaitable[Obs]]
"""``start_obs(tracing=False, **serve_settings)``: a started ``Obs``."""
