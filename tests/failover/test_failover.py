"""A Redis Cluster failover under load, through real server processes.

Two server processes (``--replicas 2``) share a cluster of their own. Eight
paced clients send one subject's requests to both; mid-run the master owning
the subject's slot is SIGKILLed and its replica is promoted. Every call is
timed and classified by the limit its answer carries: ``L`` from the store
(or the over-limit cache the store filled), ``ceil(L / replicas)`` from the
``local`` failure policy.

The bound asserted is the one README "When Redis fails" states, per window
with one failover:

    admitted <= L + lost + R * ceil(L / R)  <=  2L + R * ceil(L / R)

with ``R`` = ``--replicas``, which must be the number of server processes.

``lost`` counts the increments the promoted replica had not received when
its master died (asynchronous replication): the fresh master counts from
what it has, so the store admits at most ``L + lost``. The local counters
keep their counts for the whole window, across every outage in it.

Each test prints what it measured (run pytest with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from redis.crc import key_slot

from harness.cluster import ClusterNodeServer, ValkeyCluster
from harness.server import ServerProcess
from ratelimit_ext.decision import subject_of
from ratelimit_ext.policy.model import Unit, Window
from ratelimit_ext.store.base import CounterRequest
from ratelimit_ext.store.script import window_keys

DOMAIN = "failover"
LIMIT = 200
FRESH_LIMIT = 10
REPLICAS = 2
LOCAL_SHARE = math.ceil(LIMIT / REPLICAS)
BOUND = 2 * LIMIT + REPLICAS * LOCAL_SHARE
"""The documented worst case per window (``lost`` at its maximum, ``L``)."""
NO_LOSS_BOUND = LIMIT + REPLICAS * LOCAL_SHARE
"""The bound when the promoted replica had every increment (``lost`` = 0)."""

STORE_TIMEOUT = 0.05
"""Short enough to answer well within a second, long enough for a busy 2-core box."""
MAX_LATENCY = 1.0
CLIENTS = 8
CALL_INTERVAL = 0.08
"""Seconds between the starts of one client's calls: about 100 calls/s in all."""
KILL_AFTER = 1.5
"""Seconds of load before the kill: about 150 hits, short of LIMIT."""
AFTER_RECOVERY = 4.0
"""Seconds of load after the promotion is visible to every node."""
MAX_RUN = 25.0
MAX_CALLS_PER_CLIENT = math.ceil(MAX_RUN / CALL_INTERVAL)
CALL_TIMEOUT = 5.0
HOUR = 3600
BOUNDARY_MARGIN = 45.0
"""A run must not cross an hour boundary: the bound is per window."""

POLICY = f"""\
domain: {DOMAIN}
descriptors:
  - key: generic_key
    value: "load-*"
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
  - key: generic_key
    value: "fresh-*"
    rate_limit: {{unit: hour, requests_per_unit: {FRESH_LIMIT}}}
"""
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
_Response = rls_pb2.RateLimitResponse
FROM_STORE = {"store-ok", "store-over"}
DEGRADED = {"local-ok", "local-over", "unavailable"}

pytestmark = pytest.mark.cluster


# --- what one run saw ----------------------------------------------------------


@dataclass
class Run:
    """Every call of a run: (start, latency, outcome), times on the monotonic clock.

    Outcomes: ``store-ok`` / ``store-over`` (an answer with the full limit),
    ``local-ok`` / ``local-over`` (the local share), ``unavailable``, or
    ``error: ...`` for anything else.
    """

    calls: list[tuple[float, float, str]] = field(default_factory=list)
    killed_at: float = 0.0
    promoted_at: float = 0.0
    ends_at: float = float("inf")

    def count(self, *outcomes: str, since: float = 0.0) -> int:
        return sum(1 for t, _, o in self.calls if o in outcomes and t >= since)

    @property
    def admitted(self) -> int:
        return self.count("store-ok", "local-ok")

    @property
    def max_latency(self) -> float:
        return max(latency for _, latency, _ in self.calls)

    def outcomes(self) -> Counter[str]:
        return Counter(outcome for _, _, outcome in self.calls)

    def first(self, outcomes: set[str], since: float) -> float | None:
        """When the first call with one of ``outcomes`` started, from ``since``."""
        return next((t for t, _, o in self.calls if o in outcomes and t >= since), None)

    def outage(self) -> tuple[float, float]:
        """Seconds after the kill: the first degraded answer, the store's return."""
        degraded = self.first(DEGRADED, self.killed_at)
        if degraded is None:
            return math.nan, math.nan
        back = self.first(FROM_STORE, degraded)
        back_after = math.nan if back is None else back - self.killed_at
        return degraded - self.killed_at, back_after

    def last_seconds(self, seconds: float) -> Counter[str]:
        end = max(t for t, _, _ in self.calls)
        return Counter(o for t, _, o in self.calls if t >= end - seconds)


def classify(response: rls_pb2.RateLimitResponse, configured: int) -> str:
    """``store-``/``local-`` by the limit answered, then ``ok``/``over``."""
    limit = response.statuses[0].current_limit.requests_per_unit
    local = math.ceil(configured / REPLICAS)
    source = {configured: "store", local: "local"}.get(limit)
    if source is None:
        return f"error: unexpected limit {limit}"
    if response.overall_code == _Response.OK:
        return f"{source}-ok"
    if response.overall_code == _Response.OVER_LIMIT:
        return f"{source}-over"
    return f"error: code {response.overall_code}"


# --- fixtures and helpers ----------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[ValkeyCluster]:
    """A cluster of this test's own: a master of it is killed."""
    with ValkeyCluster() as own:
        yield own


def start_servers(
    cluster: ValkeyCluster, workdir: Path, policy: str, stack: ExitStack
) -> list[ServerProcess]:
    config = workdir / "config"
    config.mkdir()
    (config / "policy.yaml").write_text(POLICY)
    args = (
        "--replicas", str(REPLICAS),
        "--failure-policy", policy,
        "--store-timeout", str(STORE_TIMEOUT),
        "--no-watch",
    )  # fmt: skip
    return [
        stack.enter_context(
            ServerProcess(
                config, workdir, store=cluster.url, metrics=False, extra_args=args
            )
        )
        for _ in range(REPLICAS)
    ]


def counter_key(value: str, limit: int) -> str:
    subject = subject_of(DOMAIN, "generic_key", value)
    return window_keys(CounterRequest(subject, (Window(limit, Unit.HOUR),)), "rlx")[0]


def value_on(cluster: ValkeyCluster, master: ClusterNodeServer, prefix: str) -> str:
    """A descriptor value whose counter lives on ``master``."""
    limit = LIMIT if prefix == "load" else FRESH_LIMIT
    for index in range(10_000):
        value = f"{prefix}-{index}"
        slot = key_slot(counter_key(value, limit).encode())
        if cluster.master_for_slot(slot).port == master.port:
            return value
    raise AssertionError(f"no {prefix} value on {master}")


def request(value: str, hits: int | None = None) -> rls_pb2.RateLimitRequest:
    message = rls_pb2.RateLimitRequest(domain=DOMAIN)
    descriptor = message.descriptors.add()
    descriptor.entries.add(key="generic_key", value=value)
    if hits is not None:
        descriptor.hits_addend.value = hits
    return message


async def clear_of_hour_boundary() -> None:
    """Wait for the next hour if this one ends within BOUNDARY_MARGIN.

    Both the store (Valkey's TIME) and the local counters use this host's clock.
    """
    left = HOUR - time.time() % HOUR
    if left < BOUNDARY_MARGIN:
        await asyncio.sleep(left + 1.0)


class Clients:
    """One channel per server and a ShouldRateLimit callable on each."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.channels = [
            grpc.aio.insecure_channel(server.address, options=OWN_CONNECTION)
            for server in servers
        ]
        self.calls = [
            channel.unary_unary(
                SHOULD_RATE_LIMIT,
                request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
                response_deserializer=rls_pb2.RateLimitResponse.FromString,
            )
            for channel in self.channels
        ]

    async def __aenter__(self) -> Clients:
        ready = (channel.channel_ready() for channel in self.channels)
        await asyncio.wait_for(asyncio.gather(*ready), timeout=10.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels))

    async def one(
        self, server: int, message: rls_pb2.RateLimitRequest, limit: int = LIMIT
    ) -> str:
        try:
            response = await self.calls[server](message, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                return "unavailable"
            return f"error: {error.code().name} {error.details()}"
        return classify(response, limit)


async def client_loop(n: int, clients: Clients, value: str, run: Run) -> None:
    """Paced calls to server ``n % 2`` until the run ends (or MAX_CALLS_PER_CLIENT)."""
    message = request(value)
    started = time.monotonic() + n * CALL_INTERVAL / CLIENTS
    for index in range(MAX_CALLS_PER_CLIENT):
        due = started + index * CALL_INTERVAL
        now = time.monotonic()
        if now >= run.ends_at:
            return
        if due > now:
            await asyncio.sleep(due - now)
        begun = time.monotonic()
        outcome = await clients.one(n % REPLICAS, message)
        run.calls.append((begun, time.monotonic() - begun, outcome))


async def fail_over(
    cluster: ValkeyCluster, victim: ClusterNodeServer, slot: int, run: Run
) -> ClusterNodeServer:
    """Kill ``victim`` after KILL_AFTER; end the run AFTER_RECOVERY after promotion."""
    await asyncio.sleep(KILL_AFTER)
    run.killed_at = time.monotonic()
    await asyncio.to_thread(cluster.kill, victim)
    promoted = await asyncio.to_thread(cluster.wait_for_failover, victim, slot)
    run.promoted_at = time.monotonic()
    run.ends_at = run.promoted_at + AFTER_RECOVERY
    return promoted


async def drive_through_failover(
    cluster: ValkeyCluster, servers: list[ServerProcess]
) -> tuple[Run, ClusterNodeServer]:
    """The load, with the subject's master killed mid-run."""
    victim = cluster.current_masters()[0]
    value = value_on(cluster, victim, "load")
    key = counter_key(value, LIMIT)
    run = Run(ends_at=time.monotonic() + MAX_RUN)
    async with Clients(servers) as clients:
        begun = time.monotonic()
        first = await clients.one(0, request(value))
        run.calls.append((begun, time.monotonic() - begun, first))
        assert first == "store-ok"
        with victim.client() as client:
            assert client.exists(key) == 1, f"{key} is not on the victim"
        loops = [client_loop(n, clients, value, run) for n in range(CLIENTS)]
        failover = asyncio.create_task(
            fail_over(cluster, victim, key_slot(key.encode()), run)
        )
        try:
            await asyncio.gather(*loops)
        finally:
            promoted = await failover
    return run, promoted


async def fresh_subject_is_shared(
    cluster: ValkeyCluster, servers: list[ServerProcess], master: ClusterNodeServer
) -> tuple[Counter[str], Counter[int]]:
    """2 x FRESH_LIMIT calls alternating servers, on a subject of ``master``.

    First waits (bounded) until both servers answer from the store.
    """
    value = value_on(cluster, master, "fresh")
    async with Clients(servers) as clients:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            probes = [
                await clients.one(s, request(value, 0), FRESH_LIMIT)
                for s in range(REPLICAS)
            ]
            if probes == ["store-ok"] * REPLICAS:
                break
            await asyncio.sleep(0.1)
        outcomes: Counter[str] = Counter()
        admitted_by: Counter[int] = Counter()
        for index in range(2 * FRESH_LIMIT):
            server = index % REPLICAS
            outcome = await clients.one(server, request(value), FRESH_LIMIT)
            outcomes[outcome] += 1
            admitted_by[server] += outcome == "store-ok"
    return outcomes, admitted_by


def report(policy: str, run: Run) -> str:
    """The measured numbers, for the test output and every assertion message."""
    degraded, back = run.outage()
    store_after_kill = run.count("store-ok", since=run.killed_at)
    bound = (
        f"{BOUND} = 2L + R*ceil(L/R) ({NO_LOSS_BOUND} without replication loss)"
        if policy == "local"
        else f"{2 * LIMIT} = 2L ({LIMIT} without replication loss)"
    )
    lines = [
        f"failover, failure policy {policy!r}: L={LIMIT}, R={REPLICAS} servers,"
        f" local share {LOCAL_SHARE}, store timeout {STORE_TIMEOUT * 1000:.0f} ms",
        f"  calls {len(run.calls)}: {dict(run.outcomes())}",
        f"  admitted {run.admitted}: store {run.count('store-ok')}"
        f" ({run.count('store-ok') - store_after_kill} before the kill,"
        f" {store_after_kill} after), local {run.count('local-ok')}; bound {bound}",
        f"  after the kill: first degraded answer {degraded:.2f} s,"
        f" promotion seen {run.promoted_at - run.killed_at:.2f} s,"
        f" store answers again {back:.2f} s",
        f"  slowest call {run.max_latency * 1000:.0f} ms",
    ]
    return "\n".join(lines)


# --- the tests --------------------------------------------------------------------


async def test_local_policy_through_a_failover_stays_within_the_bound(
    cluster: ValkeyCluster, tmp_path: Path
) -> None:
    """Never an error, never a hang, back on the store, admitted <= the bound."""
    await clear_of_hour_boundary()
    with ExitStack() as stack:
        servers = start_servers(cluster, tmp_path, "local", stack)
        run, promoted = await drive_through_failover(cluster, servers)
        fresh, admitted_by = await fresh_subject_is_shared(cluster, servers, promoted)
    summary = report("local", run)
    print(f"\n{summary}")

    outcomes = run.outcomes()
    assert set(outcomes) <= {"store-ok", "store-over", "local-ok", "local-over"}, (
        summary
    )
    assert run.max_latency < MAX_LATENCY, summary
    assert run.count("local-ok", "local-over") > 0, summary  # the outage was seen
    assert run.count("local-ok") <= REPLICAS * LOCAL_SHARE, summary
    assert run.count("store-ok") <= 2 * LIMIT, summary  # L + lost, lost <= L
    assert run.admitted <= BOUND, summary
    assert run.admitted > LIMIT, summary  # the outage did let more through
    # Back on the store by themselves: the last second came from it ...
    assert set(run.last_seconds(1.0)) <= FROM_STORE, summary
    # ... and a fresh subject on the promoted master is counted exactly again.
    assert fresh == {"store-ok": FRESH_LIMIT, "store-over": FRESH_LIMIT}, fresh
    assert set(admitted_by) == {0, 1} and all(admitted_by.values()), admitted_by


async def test_unavailable_policy_through_a_failover_answers_unavailable(
    cluster: ValkeyCluster, tmp_path: Path
) -> None:
    """UNAVAILABLE while the store is away, never a hang, then the store again."""
    await clear_of_hour_boundary()
    with ExitStack() as stack:
        servers = start_servers(cluster, tmp_path, "unavailable", stack)
        run, promoted = await drive_through_failover(cluster, servers)
        fresh, admitted_by = await fresh_subject_is_shared(cluster, servers, promoted)
    summary = report("unavailable", run)
    print(f"\n{summary}")

    outcomes = run.outcomes()
    assert set(outcomes) <= {"store-ok", "store-over", "unavailable"}, summary
    assert outcomes["unavailable"] > 0, summary
    assert run.max_latency < MAX_LATENCY, summary
    assert run.admitted <= 2 * LIMIT, summary  # L + lost, lost <= L
    assert set(run.last_seconds(1.0)) <= FROM_STORE, summary
    assert fresh == {"store-ok": FRESH_LIMIT, "store-over": FRESH_LIMIT}, fresh
    assert set(admitted_by) == {0, 1} and all(admitted_by.values()), admitted_by
