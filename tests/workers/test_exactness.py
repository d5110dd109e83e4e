"""Exactly the limit is admitted when several processes share one counter.

Two server instances on one store: a supervisor with two workers and a
single process, so three processes count at once. Sixteen concurrent
clients over eight connections (four per instance) send three times the
limit for one descriptor; every algorithm must admit exactly the limit,
never one more, on every shared store.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from harness.server import ServerProcess
from workers.supervised import (
    NO_ADMIN,
    OWN_CONNECTION,
    SHOULD_RATE_LIMIT,
    SLOW_STORE,
)

DOMAIN = "exact"
LIMIT = 50
BURST = 50
BUCKET_REFILL_PER_SECOND = 1 / 86_400
"""One token a day: the bucket cannot refill a whole token during the test."""
REQUESTS = 3 * LIMIT
CLIENTS = 16
CONNECTIONS_PER_INSTANCE = 4
WINDOW_SECONDS = 3600
BOUNDARY_MARGIN = 30.0
"""Seconds before an hour boundary in which a window test waits for the next hour."""
POLICY = f"""\
domain: {DOMAIN}
descriptors:
  - key: generic_key
    value: "fixed_window-*"
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}, algorithm: fixed_window}}
  - key: generic_key
    value: "sliding_window-*"
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}, algorithm: sliding_window}}
  - key: generic_key
    value: "token_bucket-*"
    rate_limit:
      unit: day
      requests_per_unit: 1
      algorithm: token_bucket
      burst: {BURST}
"""

# --- shared stores -------------------------------------------------------------
# Every store that servers can share. Each param names the session fixture
# (tests/conftest.py) whose ``url`` the servers get.
SHARED_STORES = [
    pytest.param("valkey", id="redis", marks=pytest.mark.redis),
    pytest.param(
        "valkey_cluster", id="cluster", marks=[pytest.mark.redis, pytest.mark.cluster]
    ),
]


@pytest.fixture(scope="module", params=SHARED_STORES)
def store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param).url

    return url


@pytest.fixture(scope="module")
def instances(
    store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A two-worker supervisor and a single process, both on ``store_url``."""
    workdir = tmp_path_factory.mktemp("exactness")
    config = workdir / "config"
    config.mkdir()
    (config / "policy.yaml").write_text(POLICY)
    options = (*SLOW_STORE, *NO_ADMIN)
    with ExitStack() as stack:
        supervised = ServerProcess(
            config,
            workdir,
            store=store_url,
            metrics=False,
            extra_args=("--workers", "2", *options),
            ready_timeout=30.0,
        )
        single = ServerProcess(
            config, workdir, store=store_url, metrics=False, extra_args=options
        )
        yield stack.enter_context(supervised), stack.enter_context(single)


@dataclass
class Tally:
    """Answers per instance (0: the supervisor, 1: the single process)."""

    admitted: Counter[int] = field(default_factory=Counter)
    refused: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window"])
async def test_windows_admit_exactly_the_limit(
    instances: tuple[ServerProcess, ServerProcess], algorithm: str
) -> None:
    """Three processes, one hour window: exactly LIMIT of 3 x LIMIT admitted."""
    await _clear_of_window_boundary()

    tally = await _drive(instances, f"{algorithm}-{uuid.uuid4().hex}")

    _assert_exact(tally, LIMIT)


async def test_token_bucket_admits_exactly_the_burst(
    instances: tuple[ServerProcess, ServerProcess],
) -> None:
    """A full bucket of BURST, refilled by whole tokens only: BURST + 0 admitted."""
    started = time.monotonic()

    tally = await _drive(instances, f"token_bucket-{uuid.uuid4().hex}")

    refilled = math.floor((time.monotonic() - started) * BUCKET_REFILL_PER_SECOND)
    _assert_exact(tally, BURST + refilled)


def _assert_exact(tally: Tally, expected: int) -> None:
    assert tally.errors == []
    assert sum(tally.admitted.values()) == expected, tally
    assert sum(tally.refused.values()) == REQUESTS - expected, tally
    # Both instances admitted some: they really shared the counter.
    assert set(tally.admitted) == {0, 1}, tally


async def _clear_of_window_boundary() -> None:
    """Wait for the next hour if this one ends within BOUNDARY_MARGIN.

    The store's clock (Valkey's TIME) is this host's clock.
    """
    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < BOUNDARY_MARGIN:
        await asyncio.sleep(left + 1.0)


async def _drive(instances: tuple[ServerProcess, ...], value: str) -> Tally:
    """REQUESTS calls from CLIENTS tasks, spread evenly over the instances."""
    channels = [
        grpc.aio.insecure_channel(instance.address, options=OWN_CONNECTION)
        for instance in instances
        for _ in range(CONNECTIONS_PER_INSTANCE)
    ]
    try:
        ready = (channel.channel_ready() for channel in channels)
        await asyncio.wait_for(asyncio.gather(*ready), timeout=10.0)
        tally = Tally()
        tickets = iter(range(REQUESTS))
        await asyncio.gather(
            *(_client(n, channels, tickets, value, tally) for n in range(CLIENTS))
        )
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))

    return tally


async def _client(
    n: int,
    channels: list[grpc.aio.Channel],
    tickets: Iterator[int],
    value: str,
    tally: Tally,
) -> None:
    """Take tickets until none are left; each is one call on this client's channel."""
    slot = n % len(channels)
    instance = slot // CONNECTIONS_PER_INSTANCE
    call = channels[slot].unary_unary(
        SHOULD_RATE_LIMIT,
        request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
        response_deserializer=rls_pb2.RateLimitResponse.FromString,
    )
    request = rls_pb2.RateLimitRequest(domain=DOMAIN)
    request.descriptors.add().entries.add(key="generic_key", value=value)
    for _ in tickets:
        try:
            response = await call(request, timeout=10.0)
        except grpc.aio.AioRpcError as error:
            tally.errors.append(f"instance {instance}: {error.code()}")
            continue
        if response.overall_code == rls_pb2.RateLimitResponse.OK:
            tally.admitted[instance] += 1
        elif response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT:
            tally.refused[instance] += 1
        else:
            tally.errors.append(f"instance {instance}: {response}")
