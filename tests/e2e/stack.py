"""The e2e stack's pieces: policy, callers, config files, and the Edge handle.

Counters cannot leak between tests because every test uses its own callers:
the config directory holds one API key per test role, each with its own
identity (with a per-run suffix, so a reused Redis never sees one twice).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness.envoy import EnvoyProcess, edge_bootstrap
from harness.server import ServerProcess
from harness.upstream import EchoUpstream

DOMAIN = "edge"
TEST_ID_HEADER = "x-test-id"

POLICY: dict[str, Any] = {
    "domain": DOMAIN,
    "tiers": [
        {
            "name": "free",
            "limits": [
                {"unit": "minute", "requests_per_unit": 3},
                {"unit": "day", "requests_per_unit": 100},
            ],
        },
        {"name": "pro", "limits": [{"unit": "minute", "requests_per_unit": 6}]},
    ],
    "descriptors": [
        {"key": "user_id", "rate_limit": {"from_tier": True}},
        {
            "key": "generic_key",
            "value": "shadowed",
            "shadow_mode": True,
            "rate_limit": {"unit": "minute", "requests_per_unit": 1},
        },
        {
            "key": "generic_key",
            "value": "free-for-all",
            "rate_limit": {"unlimited": True},
        },
    ],
}

FREE_PER_MINUTE = 3
PRO_PER_MINUTE = 6

CALLER_TIERS: Mapping[str, str] = {
    "reader": "free",
    "spoofer": "free",
    "bearer": "free",
    "limited": "free",
    "alice": "free",
    "bob": "free",
    "pro": "pro",
    "shadow": "pro",
    "unlimited": "free",
    "checked": "free",
    "deployed": "free",
}
"""One caller per test role, so no two tests share a counter."""


@dataclass(frozen=True)
class Caller:
    key: str = field(repr=False)
    identity: str
    tier: str

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.key}


def make_callers(tiers: Mapping[str, str] = CALLER_TIERS) -> dict[str, Caller]:
    run = secrets.token_hex(4)
    return {
        role: Caller(secrets.token_urlsafe(24), f"{role}-{run}", tier)
        for role, tier in tiers.items()
    }


def write_config(
    directory: Path, callers: Mapping[str, Caller], policy: Mapping[str, Any] = POLICY
) -> Path:
    """A config directory: the policy YAML plus an ``api_keys`` file."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = [
        {
            "sha256": hashlib.sha256(c.key.encode()).hexdigest(),
            "identity": c.identity,
            "tier": c.tier,
        }
        for c in callers.values()
    ]
    (directory / "policy.yaml").write_text(
        yaml.safe_dump(dict(policy), sort_keys=False)
    )
    (directory / "api_keys.yaml").write_text(yaml.safe_dump({"api_keys": keys}))

    return directory


def open_edge(
    stack: ExitStack,
    kind: str,
    store: str,
    workdir: Path,
    policy: Mapping[str, Any] = POLICY,
) -> Edge:
    """Upstream + ratelimit-ext on ``store`` + Envoy, stopped with ``stack``."""
    callers = make_callers()
    config = write_config(workdir / "config", callers, policy)
    upstream = stack.enter_context(EchoUpstream())
    # Envoy here waits up to 1 s; so may the store, on a CI machine whose two
    # cores also run Envoy, Valkey and the test itself.
    server = stack.enter_context(
        ServerProcess(
            config, workdir, store=store, extra_args=("--store-timeout", "0.5")
        )
    )
    bootstrap = edge_bootstrap(
        server_port=server.port, upstream_port=upstream.port, domain=DOMAIN
    )
    envoy = stack.enter_context(EnvoyProcess(bootstrap, workdir))
    client = stack.enter_context(
        httpx.Client(base_url=envoy.http_url, trust_env=False, timeout=10.0)
    )
    return Edge(kind, server, envoy, upstream, client, callers)


def wait_for_window_room(needed: float = 5.0) -> None:
    """Sleep into the next minute if fewer than ``needed`` seconds are left.

    Windows are aligned to the minute; a test counting N+1 requests must not
    straddle a window boundary.
    """
    left = 60.0 - time.time() % 60.0
    if left < needed:
        time.sleep(left + 0.05)


def show(response: httpx.Response) -> str:
    """A response as text, for an assertion message."""
    return f"{response.status_code} {dict(response.headers)}\n{response.text[:800]}"


@dataclass(repr=False)
class Edge:
    """A running stack and an HTTP client pointed at Envoy."""

    store: str
    server: ServerProcess
    envoy: EnvoyProcess
    upstream: EchoUpstream
    client: httpx.Client
    callers: dict[str, Caller] = field(default_factory=dict)

    def get(
        self,
        path: str = "/",
        caller: Caller | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """GET through Envoy, tagged with a unique ``x-test-id``."""
        sent = {TEST_ID_HEADER: uuid.uuid4().hex}
        if caller is not None:
            sent.update(caller.headers)
        sent.update(headers or {})

        return self.client.get(path, headers=sent)

    def reached_upstream(self, response: httpx.Response) -> bool:
        tag = response.request.headers[TEST_ID_HEADER]

        return bool(self.upstream.requests_with(TEST_ID_HEADER, tag))

    def __repr__(self) -> str:
        return f"Edge(store={self.store!r}, envoy={self.envoy.http_url})"

    def logs(self) -> str:
        return f"{self.server.describe()}\n{self.envoy.describe()}"
