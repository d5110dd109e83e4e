"""Benchmark ShouldRateLimit on the real server (memory/redis/cluster) vs a floor.

    python perf/bench_rls.py [--clients N] [--seconds T]
                             [--stores floor,memory,redis,cluster]
                             [--channels C] [--over-limit] [--json]

For each target it starts the server (and valkey for ``redis``, a 6-node valkey
cluster for ``cluster``) on free loopback ports, waits until it is ready, drives
it from a separate load process (perf/rls_load.py) and reads the server's CPU
time from /proc over the measured window; for redis and cluster also the Redis
commands and round trips per decision (INFO deltas, redis_stats.py). Every
process it starts is stopped again, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from benchlib import (
    LOOPBACK,
    PERF_DIR,
    REDIS_COLUMNS,
    STOP_TIMEOUT_S,
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
    stop_process,
    wait_ready,
)
from redis_stats import describe as describe_redis
from rls_load import USERS, bench_request, bounded

STORES = ("floor", "memory", "redis", "cluster")


@dataclass
class Target:
    name: str
    address: str
    log: Path
    watch: dict[str, int] = field(default_factory=dict)
    redis_nodes: list[str] = field(default_factory=list)


def rls_answers(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        try:
            stub.ShouldRateLimit(bench_request(0), timeout=1)
        except grpc.RpcError:
            return False
    return True


# --- targets -------------------------------------------------------------------


def start_floor(
    stack: contextlib.ExitStack, args: argparse.Namespace, workdir: Path
) -> Target:
    address = f"{LOOPBACK}:{free_port()}"
    cmd = [sys.executable, str(PERF_DIR / "floor_server.py"), "--listen", address]
    if args.over_limit:
        cmd.append("--over-limit")
    log = workdir / "floor.log"
    proc = stack.enter_context(started(cmd, log))
    wait_ready("floor server", proc, log, lambda: rls_answers(address))
    return Target("floor", address, log, {"server": proc.pid})


def start_target(
    stack: contextlib.ExitStack, args: argparse.Namespace, workdir: Path, store: str
) -> Target:
    if store == "floor":
        return start_floor(stack, args, workdir)
    backend = start_backend(stack, args, workdir, store)
    return Target(store, backend.address, backend.log, backend.watch, backend.nodes)


# --- load ----------------------------------------------------------------------


def run_load(target: Target, args: argparse.Namespace, workdir: Path) -> Result:
    cmd = [
        sys.executable, str(PERF_DIR / "rls_load.py"),
        "--target", target.address,
        "--clients", str(args.clients),
        "--channels", str(args.channels),
        "--seconds", str(args.seconds),
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    cmd += [f"--watch={name}={pid}" for name, pid in target.watch.items()]
    cmd += [f"--redis={node}" for node in target.redis_nodes]
    if args.over_limit:
        cmd.append("--prime")
    out_path = workdir / f"load-{target.name}.json"
    log = workdir / f"load-{target.name}.log"
    budget = args.warmup + args.seconds + 30 + (60 if args.over_limit else 0)
    with out_path.open("wb") as out, log.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(budget)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"load for {target.name} ran over {budget:.0f}s") from exc
        finally:
            stop_process(proc)
    if proc.returncode != 0:
        raise BenchError(f"load for {target.name} failed:\n{log_tail(log)}")
    result: Result = json.loads(out_path.read_text())
    result["target"] = target.name
    return result


def start_profiler(
    stack: contextlib.ExitStack, args: argparse.Namespace, target: Target, log: Path
) -> subprocess.Popen[bytes]:
    """py-spy on the server for the warm-up + measured window (collapsed stacks)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(args.py_spy) / f"{target.name}.collapsed"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        py_spy, "record", "--nonblocking", "--format", "raw",
        "--rate", "100",
        "--duration", str(math.ceil(args.warmup + args.seconds)),
        "--pid", str(target.watch["server"]),
        "--output", str(out),
    ]  # fmt: skip
    return stack.enter_context(started(cmd, log))


def wait_profiler(profiler: subprocess.Popen[bytes], log: Path) -> None:
    try:
        profiler.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"bench_rls: py-spy overran:\n{log_tail(log)}", file=sys.stderr)


def bench_one(store: str, args: argparse.Namespace, workdir: Path) -> Result:
    target_dir = workdir / store
    target_dir.mkdir()
    with contextlib.ExitStack() as stack:
        target = start_target(stack, args, target_dir, store)
        spy_log = target_dir / "py-spy.log"
        profiler = start_profiler(stack, args, target, spy_log) if args.py_spy else None
        result = run_load(target, args, target_dir)
        if profiler is not None:
            wait_profiler(profiler, spy_log)
    if store != "floor":
        result["breaker"] = breaker_summary(target.log)
    if store == "cluster":
        add_valkey_totals(result, ("cpu_s", "cpu_us_per_call"))
    if result["errors"]:
        print(
            f"bench_rls: {store} server log:\n{log_tail(target.log)}", file=sys.stderr
        )
    return result


# --- report --------------------------------------------------------------------


def add_floor_ratio(results: list[Result]) -> None:
    floor = next((r for r in results if r["target"] == "floor"), None)
    base = floor["cpu_us_per_call"]["server"] if floor else None
    for result in results:
        cpu = result["cpu_us_per_call"]["server"]
        result["server_cpu_vs_floor"] = round(cpu / base, 2) if base and cpu else None


COLUMNS: tuple[Column, ...] = (
    ("target", 7, lambda r: r["target"]),
    ("calls", 8, lambda r: fmt(r["calls"])),
    ("errors", 6, lambda r: fmt(r["errors"])),
    ("calls/s", 8, lambda r: fmt(r["calls_per_s"], ".0f")),
    ("p50 ms", 7, lambda r: fmt(r["p50_ms"], ".2f")),
    ("p99 ms", 7, lambda r: fmt(r["p99_ms"], ".2f")),
    ("srv us/call", 11, lambda r: fmt(r["cpu_us_per_call"]["server"], ".0f")),
    ("x floor", 7, lambda r: fmt(r["server_cpu_vs_floor"], ".2f")),
    ("main us/call", 12, lambda r: fmt(r["cpu_us_per_call"]["server_main"], ".0f")),
    ("valkey us/call", 14, lambda r: fmt(r["cpu_us_per_call"].get("valkey"), ".0f")),
    *REDIS_COLUMNS,
    ("load us/call", 12, lambda r: fmt(r["cpu_us_per_call"]["load"], ".0f")),
    ("other cpu%", 10, lambda r: fmt(r["other_cpu_pct"], ".0f")),
    ("codes", 0, lambda r: " ".join(f"{k}={v}" for k, v in sorted(r["codes"].items()))),
)


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    mode = "over-limit" if args.over_limit else "under-limit"
    heading = (
        f"# {args.clients} clients, {args.channels} channel(s), {args.seconds:g}s"
        f" (+{args.warmup:g}s warm-up), {mode}, {os.cpu_count()} CPUs"
    )
    print_rows(heading, args, COLUMNS, results)
    for result in results:
        if result["errors"]:
            print(f"# {result['target']} errors: {result['error_codes']}")
    for result in results:
        breaker = result.get("breaker")
        if breaker and breaker["opened"]:
            print(
                f"# {result['target']}: the store circuit breaker opened"
                f" {breaker['opened']} time(s), ended {breaker['last_state']}"
            )
    for result in results:
        primed = result.get("prime")
        if primed and primed.get("redis"):
            print(
                f"# {result['target']} priming ({primed['calls']} calls,"
                f" {primed['over_limit']} of {USERS} requests primed), redis:"
                f" {describe_redis(primed['redis'])}"
            )
        if result.get("redis"):
            print(f"# {result['target']} redis: {describe_redis(result['redis'])}")


# --- main ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(__doc__)
    parser.add_argument(
        "--clients",
        type=bounded(int, 1, 512),
        default=32,
        help="concurrent calls in flight",
    )
    parser.add_argument(
        "--seconds",
        type=bounded(float, 0.5, 60),
        default=5.0,
        help="measured seconds per target",
    )
    parser.add_argument(
        "--warmup",
        type=bounded(float, 0, 10),
        default=1.0,
        help="unmeasured seconds before each measurement",
    )
    parser.add_argument(
        "--channels",
        type=bounded(int, 1, 16),
        default=1,
        help="gRPC channels (connections) for the load",
    )
    parser.add_argument(
        "--stores",
        type=comma_list(STORES, "stores"),
        default=list(STORES),
        help="comma-separated targets, run in this order",
    )
    add_common_arguments(
        parser,
        over_limit="policy of 1/hour: every call is OVER_LIMIT (each distinct "
        "request is first primed until all its descriptors are OVER_LIMIT)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="also sample each server with py-spy into DIR/<target>.collapsed "
        "(costs CPU on the shared cores: numbers of such a run are not clean)",
    )
    return parser


def main() -> int:
    args = build_parser().parse_args()
    return bench_main(
        "bench_rls",
        args,
        args.stores,
        lambda store, workdir: [bench_one(store, args, workdir)],
        add_floor_ratio,
        print_table,
    )


if __name__ == "__main__":
    sys.exit(main())
