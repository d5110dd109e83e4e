"""Closed-loop ShouldRateLimit load generator (one process, grpc.aio).

Keeps ``--clients`` calls in flight over ``--channels`` channels. After a warm-up
it measures for ``--seconds``: completed calls, errors, latency percentiles, the
response codes, and the CPU time that each watched process (``--watch name=pid``,
the process and its descendants) and this load process used during that window,
and, with ``--redis HOST:PORT`` (repeatable), the Redis commands and round trips
of the window (redis_stats.py). Prints one JSON object on stdout. Normally
started by bench_rls.py.

    python perf/rls_load.py --target 127.0.0.1:50051 --clients 32 --seconds 5 \
        --watch server=12345
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from redis_stats import RedisProbe
from redis_stats import summarize as summarize_redis

DOMAIN = "bench"
USERS = 1000
CALL_TIMEOUT_S = 5.0
PRIME_TRIES = 5
PRIME_WORKERS = 4
PRIME_TIMEOUT_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
N = TypeVar("N", int, float)


def bench_request(user: int) -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    return rls_pb2.RateLimitRequest(
        domain=DOMAIN,
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key="generic_key", value="bench")]
            ),
            ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key="user_id", value=f"u{user}")]
            ),
        ],
    )


# --- CPU accounting from /proc -------------------------------------------------


def _stat_ticks(path: str, count: int) -> int:
    """Sum of utime, stime[, cutime, cstime] (fields 14..17) of a /proc stat file."""
    stat = Path(path).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return sum(int(value) for value in fields[11 : 11 + count])


def _proc_ticks(pid: int) -> int:
    """All threads of pid plus its reaped children."""
    return _stat_ticks(f"/proc/{pid}/stat", 4)


def main_thread_seconds(pid: int) -> float:
    """CPU seconds of pid's main thread: the one running Python/asyncio."""
    return _stat_ticks(f"/proc/{pid}/task/{pid}/stat", 2) / CLK_TCK


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids.extend(int(k) for k in (task / "children").read_text().split())
    return kids


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by pid and its live descendants."""
    total = _proc_ticks(pid)  # the watched process itself must exist
    todo = _children(pid)
    while todo:
        current = todo.pop()
        try:
            total += _proc_ticks(current)
            todo.extend(_children(current))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a descendant exited between listing and reading
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (not idle/iowait), from /proc/stat."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def snapshot(watch: dict[str, int]) -> dict[str, float]:
    cpu = {name: tree_cpu_seconds(pid) for name, pid in watch.items()}
    cpu["machine"] = machine_busy_seconds()
    if "server" in watch:
        cpu["server_main"] = main_thread_seconds(watch["server"])
    cpu["load"] = time.process_time()
    return cpu


# --- load ----------------------------------------------------------------------


@dataclass
class Window:
    measuring: bool = False
    stopped: bool = False
    latencies: list[float] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, bucket: dict[str, int], key: str, latency: float) -> None:
        if self.measuring and not self.stopped:
            bucket[key] = bucket.get(key, 0) + 1
            self.latencies.append(latency)


async def client_loop(
    stub: rls_pb2_grpc.RateLimitServiceStub,
    requests: list[rls_pb2.RateLimitRequest],
    counter: itertools.count[int],
    window: Window,
) -> None:
    code_name = rls_pb2.RateLimitResponse.Code.Name
    while not window.stopped:
        request = requests[next(counter) % len(requests)]
        start = time.perf_counter()
        try:
            response = await stub.ShouldRateLimit(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            window.record(window.errors, exc.code().name, time.perf_counter() - start)
            continue
        window.record(
            window.codes, code_name(response.overall_code), time.perf_counter() - start
        )


async def prime(
    stubs: list[rls_pb2_grpc.RateLimitServiceStub],
    requests: list[rls_pb2.RateLimitRequest],
    workers: int,
) -> dict[str, int]:
    """Send every distinct request until each of its descriptors is OVER_LIMIT.

    At most PRIME_TRIES calls each, ``workers`` at a time: afterwards each
    subject is in the server's over-limit cache (if it caches at all).
    """
    over = rls_pb2.RateLimitResponse.OVER_LIMIT
    todo = list(range(len(requests)))
    counts = {"calls": 0, "over_limit": 0}

    async def worker(offset: int) -> None:
        stub = stubs[offset % len(stubs)]
        while todo:
            request = requests[todo.pop()]
            for _ in range(PRIME_TRIES):
                counts["calls"] += 1
                try:
                    response = await stub.ShouldRateLimit(
                        request, timeout=CALL_TIMEOUT_S
                    )
                except grpc.aio.AioRpcError:
                    continue
                codes = [status.code for status in response.statuses]
                if codes and all(code == over for code in codes):
                    counts["over_limit"] += 1
                    break

    await asyncio.wait_for(
        asyncio.gather(*(worker(i) for i in range(workers))),
        PRIME_TIMEOUT_S,
    )
    return counts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    watch: dict[str, int] = dict(args.watch)
    requests = [bench_request(i) for i in range(USERS)]
    channels = [
        grpc.aio.insecure_channel(
            args.target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(args.channels)
    ]
    stubs = [rls_pb2_grpc.RateLimitServiceStub(ch) for ch in channels]
    window, counter = Window(), itertools.count()
    probe = RedisProbe(args.redis) if args.redis else None
    primed: dict[str, Any] | None = None  # counts, and their Redis cost
    if args.prime:
        prime_before = probe.snapshot() if probe else None
        primed = dict(await prime(stubs, requests, min(args.clients, PRIME_WORKERS)))
        if probe and prime_before is not None:
            primed["redis"] = summarize_redis(
                prime_before, probe.snapshot(), primed["calls"]
            )
    tasks = [
        asyncio.create_task(
            client_loop(stubs[i % len(stubs)], requests, counter, window)
        )
        for i in range(args.clients)
    ]
    try:
        await asyncio.sleep(args.warmup)
        redis_before = probe.snapshot() if probe else None
        before, t0 = snapshot(watch), time.perf_counter()
        window.measuring = True
        await asyncio.sleep(args.seconds)
        window.stopped = True
        after, elapsed = snapshot(watch), time.perf_counter() - t0
        redis_after = probe.snapshot() if probe else None
        await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT_S + 5)
    finally:
        for task in tasks:
            task.cancel()
        for channel in channels:
            await channel.close()
        if probe:
            probe.close()
    cpu = {name: after[name] - before[name] for name in after}
    result = summarize(window, elapsed, cpu, watch)
    if redis_before is not None and redis_after is not None:
        decisions = sum(window.codes.values()) + sum(window.errors.values())
        result["redis"] = summarize_redis(redis_before, redis_after, decisions)
    if primed is not None:
        result["prime"] = primed
    return result


def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def other_cpu_percent(
    cpu: dict[str, float], watch: dict[str, int], elapsed: float
) -> float:
    """Busy CPU of processes we did not start (noise), in % of one core."""
    ours = sum(cpu[name] for name in watch) + cpu["load"]
    return round(max(0.0, cpu["machine"] - ours) * 100 / elapsed, 1)


def summarize(
    window: Window, elapsed: float, cpu: dict[str, float], watch: dict[str, int]
) -> dict[str, Any]:
    ordered = sorted(window.latencies)
    ok_calls = sum(window.codes.values())
    errors = sum(window.errors.values())

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "calls": ok_calls,
        "errors": errors,
        "codes": window.codes,
        "error_codes": window.errors,
        "elapsed_s": round(elapsed, 3),
        "calls_per_s": round(ok_calls / elapsed, 1),
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1] if ordered else None),
        "other_cpu_pct": other_cpu_percent(cpu, watch, elapsed),
        "cpu_s": {name: round(value, 3) for name, value in cpu.items()},
        "cpu_us_per_call": {
            name: round(value * 1e6 / (ok_calls + errors), 1)
            if ok_calls + errors
            else None
            for name, value in cpu.items()
        },
    }


def parse_watch(item: str) -> tuple[str, int]:
    name, _, pid = item.partition("=")
    if not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"--watch expects name=pid, got {item!r}")
    return name, int(pid)


def bounded(kind: Callable[[str], N], low: N, high: N) -> Callable[[str], N]:
    """argparse type: kind(text), rejected outside [low, high]."""

    def convert(text: str) -> N:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}]")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--clients", type=bounded(int, 1, 512), default=32)
    parser.add_argument("--channels", type=bounded(int, 1, 16), default=1)
    parser.add_argument("--seconds", type=bounded(float, 0.1, 60), default=5.0)
    parser.add_argument("--warmup", type=bounded(float, 0, 10), default=1.0)
    parser.add_argument(
        "--watch",
        type=parse_watch,
        action="append",
        default=[],
        help="name=pid of a process to take CPU time of, repeatable",
    )
    parser.add_argument(
        "--prime",
        action="store_true",
        help="before the warm-up, send every distinct request until all its "
        f"descriptors are OVER_LIMIT (at most {PRIME_TRIES} tries each)",
    )
    parser.add_argument(
        "--redis",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a Redis node to read INFO commandstats from at both ends of the "
        "window (commands and round trips per call), repeatable",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
