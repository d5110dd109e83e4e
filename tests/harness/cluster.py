"""A real Redis Cluster of valkey-server processes for tests.

Three masters and one replica each by default, all from the binary that
``find_server_binary`` picks, on free loopback ports (client and cluster bus
ports both chosen, never port + 10000). The cluster is formed from Python
through redis-py (``CLUSTER SET-CONFIG-EPOCH``, ``ADDSLOTSRANGE``, ``MEET``,
``REPLICATE``), so no ``valkey-cli`` is needed. ``cluster-node-timeout`` is
short, so a killed master's replica takes over in a couple of seconds.

    with ValkeyCluster() as cluster:
        store = RedisClusterStore(cluster.url)
        cluster.kill(cluster.master_for_slot(0))

With ``tls=make_tls_files(directory)`` (``valkey.py``) every node is Debian's
``redis-server`` serving TLS only: clients, the cluster bus and replication
(``tls-cluster``, ``tls-replication``); ``url`` is then ``rediss+cluster://``
with the CA in its query, and the harness's own clients use TLS too.

Every wait is bounded and raises ``RuntimeError`` with what it saw last.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote

import redis

from .ports import free_port
from .valkey import TlsFiles, ValkeyServer, tls_query

SLOTS = 16384

T = TypeVar("T")


class ClusterNodeServer(ValkeyServer):
    """One cluster node: a ``ValkeyServer`` with cluster mode and its own bus port.

    Its ``nodes.conf`` lives in the server's directory, which ``restart``
    keeps, so a restarted node comes back with its identity and rejoins.
    """

    def __init__(
        self,
        *,
        node_timeout_ms: int,
        password: str | None = None,
        binary: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(password=password, binary=binary, tls=tls)
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = 0
        self.node_id = ""

    def __repr__(self) -> str:
        return f"ClusterNodeServer(port={self.port}, running={self.running})"

    def kill(self) -> None:
        """SIGKILL the process, as a crash would; ``restart`` brings it back."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=5)

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return dict(client.info(section))

    def cluster_info(self) -> dict[str, object]:
        with self.client() as client:
            return dict(client.execute_command("CLUSTER INFO"))

    def cluster_nodes(self) -> dict[str, dict[str, object]]:
        """``CLUSTER NODES`` as redis-py parses it: ``"ip:port"`` -> fields."""
        with self.client() as client:
            return dict(client.execute_command("CLUSTER NODES"))

    def _config(self, port: int, directory: Path) -> str:
        if not self.port:  # a first start (or a retry of it): a fresh bus port
            self.bus_port = free_port()
        lines = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-port {self.bus_port}",
            f"cluster-node-timeout {self.node_timeout_ms}",
            "cluster-replica-validity-factor 0",  # a replica may always take over
            "cluster-allow-replica-migration no",
            f"cluster-announce-ip {self.host}",
            "repl-diskless-sync-delay 0",  # replicas sync at once, not after 5 s
            "appendonly no",
        ]
        if self.password is not None:
            lines.append(f"masterauth {self.password}")  # replicas log in too
        if self.tls is not None:
            lines.append("tls-cluster yes")  # the bus (and MIGRATE) over TLS
        return super()._config(port, directory) + "\n".join(lines) + "\n"


class ValkeyCluster:
    """A running cluster; start with ``start()`` or ``with``, end with ``stop()``."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        password: str | None = None,
        binary: str | None = None,
        timeout: float = 30.0,
        tls: TlsFiles | None = None,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs a master; replicas cannot be negative")
        self.masters = masters
        self.replicas = replicas
        self.password = password
        self.timeout = timeout
        self.tls = tls
        self.nodes = [
            ClusterNodeServer(
                node_timeout_ms=node_timeout_ms,
                password=password,
                binary=binary,
                tls=tls,
            )
            for _ in range(masters * (1 + replicas))
        ]

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"ValkeyCluster(ports={ports})"

    def __enter__(self) -> ValkeyCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed (and the password).

        With ``tls``: ``rediss+cluster://`` and the CA in the query.
        """
        login = "" if self.password is None else f":{quote(self.password, safe='')}@"
        seeds = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        if self.tls is None:
            return f"redis+cluster://{login}{seeds}"
        return f"rediss+cluster://{login}{seeds}?{tls_query(self.tls)}"

    @property
    def running_nodes(self) -> list[ClusterNodeServer]:
        return [node for node in self.nodes if node.running]

    def start(self) -> ValkeyCluster:
        """Start every node, form the cluster and wait until it is healthy."""
        try:
            for node in self.nodes:
                node.start()
            self._form()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (terminate, then kill) and remove their directories."""
        for node in self.nodes:
            node.stop()

    def kill(self, node: ClusterNodeServer) -> None:
        node.kill()

    def restart(self, node: ClusterNodeServer) -> None:
        """Start a stopped or killed node again, same ports and identity."""
        node.restart()

    def flushall(self) -> None:
        """Empty every running master, and wait until its replicas are too."""
        for node in self.current_masters():
            with node.client() as client:
                client.flushall()
                client.execute_command("WAIT", self.replicas, 2000)

    def node_by_port(self, port: int) -> ClusterNodeServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node listens on port {port}")

    def master_for_slot(self, slot: int) -> ClusterNodeServer:
        """The master owning ``slot``, as a running node sees it."""
        for node in self.running_nodes:
            port = _slot_owner(node, slot)
            if port is not None:
                return self.node_by_port(port)
        raise RuntimeError(f"no running node knows who owns slot {slot}")

    def current_masters(self) -> list[ClusterNodeServer]:
        """The running nodes that are masters now."""
        return [
            node
            for node in self.running_nodes
            if node.info("replication").get("role") == "master"
        ]

    def replicas_of(self, master: ClusterNodeServer) -> list[ClusterNodeServer]:
        with master.client() as client:
            replicas = client.execute_command("CLUSTER REPLICAS", master.node_id)
        return [self.node_by_port(_port_of(address)) for address in replicas]

    def begin_slot_migration(
        self, slot: int, source: ClusterNodeServer, target: ClusterNodeServer
    ) -> None:
        """Mark ``slot`` importing on ``target`` and migrating on ``source``."""
        with target.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
        with source.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)

    def migrate_key(
        self, key: str, source: ClusterNodeServer, target: ClusterNodeServer
    ) -> None:
        """Move one key of a migrating slot from ``source`` to ``target``."""
        auth = [] if self.password is None else ["AUTH", self.password]
        with source.client() as client:
            client.execute_command(
                "MIGRATE", target.host, target.port, key, 0, 5000, *auth
            )

    def finish_slot_migration(self, slot: int, target: ClusterNodeServer) -> None:
        """Give ``slot`` to ``target`` (it first, then the other masters)."""
        others = [node for node in self.current_masters() if node is not target]
        for node in [target, *others]:
            with node.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target.node_id)
        self.wait_healthy()

    def wait_for_failover(
        self, old_master: ClusterNodeServer, slot: int, timeout: float = 15.0
    ) -> ClusterNodeServer:
        """Wait until every running node names one new owner of ``slot``."""

        def promoted() -> ClusterNodeServer | None:
            owners = {_slot_owner(node, slot) for node in self.running_nodes}
            if len(owners) != 1 or None in owners or old_master.port in owners:
                return None
            owner = self.node_by_port(next(p for p in owners if p is not None))
            return owner if self._all_ok() else None

        return _wait(promoted, timeout, f"no failover of slot {slot}")

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait for ``cluster_state:ok``, one slot map and synced replicas."""

        def healthy() -> bool | None:
            running = self.running_nodes
            if not self._all_ok():
                return None
            if len({_slot_map(node) for node in running}) != 1:
                return None
            return all(_replica_synced(node) for node in running) or None

        _wait(healthy, timeout or self.timeout, "the cluster is not healthy")

    def _all_ok(self) -> bool:
        return all(
            node.cluster_info().get("cluster_state") == "ok"
            for node in self.running_nodes
        )

    def _form(self) -> None:
        for epoch, node in enumerate(self.nodes, start=1):
            with node.client() as client:
                node.node_id = _text(client.execute_command("CLUSTER MYID"))
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
        masters = self.nodes[: self.masters]
        for index, master in enumerate(masters):
            first = index * SLOTS // self.masters
            last = (index + 1) * SLOTS // self.masters - 1
            with master.client() as client:
                client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            with node.client() as client:
                client.execute_command(
                    "CLUSTER MEET", seed.host, seed.port, seed.bus_port
                )
        _wait(self._all_known, self.timeout, "the nodes did not meet")
        for index, replica in enumerate(self.nodes[self.masters :]):
            master = masters[index % self.masters]
            with replica.client() as client:
                client.execute_command("CLUSTER REPLICATE", master.node_id)

    def _all_known(self) -> bool | None:
        for node in self.nodes:
            known = node.cluster_nodes()
            if len(known) != len(self.nodes):
                return None
            if any("handshake" in str(fields["flags"]) for fields in known.values()):
                return None
        return True


def _slot_owner(node: ClusterNodeServer, slot: int) -> int | None:
    """The port of the master owning ``slot`` in ``node``'s view, if any."""
    for first, last, master_port in _slot_map(node):
        if first <= slot <= last:
            return master_port
    return None


def _slot_map(node: ClusterNodeServer) -> tuple[tuple[int, int, int], ...]:
    """``node``'s (first slot, last slot, master port) ranges, sorted."""
    try:
        with node.client() as client:
            ranges = client.execute_command("CLUSTER SLOTS")
    except redis.RedisError:
        return ()
    return tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in ranges))


def _replica_synced(node: ClusterNodeServer) -> bool:
    replication = node.info("replication")
    if replication.get("role") == "master":
        return True
    return replication.get("master_link_status") == "up"


def _port_of(address: str) -> int:
    """The client port in a node address (``ip:port`` or ``ip:port@bus``)."""
    return int(address.split("@")[0].rsplit(":", 1)[1])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _wait(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something other than None (or time is up)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (redis.RedisError, OSError) as exc:
            last_error = exc
            result = None
        if result is not None:
            return result
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {timeout} s (last error: {last_error})")
