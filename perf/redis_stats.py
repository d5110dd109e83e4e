"""Redis commands and round trips of a measured window, from ``INFO`` deltas.

    probe = RedisProbe(["127.0.0.1:6379", ...])   # connects at once
    before = probe.snapshot()
    ...                                          # the measured window
    summary = summarize(before, probe.snapshot(), decisions)

Each node is read once at each end of the window with one ``INFO stats
commandstats replication`` over a connection opened beforehand, so the probe
itself adds exactly one ``INFO`` call and one read event per node to the
delta; both are taken out again.

- **commands**: ``cmdstat_*`` calls on the nodes that are masters at the end,
  minus ``info`` (the probe), ``replconf`` (replicas' once-a-second ACKs) and
  the commands the counter scripts run inside Redis (commandstats counts those
  too; their names are read from ``src/ratelimit_ext/store/lua/*.lua``). This
  is what the server sent: ``evalsha``, ``eval``, ``script|load``,
  ``cluster|slots``, ``hello``, ... The in-script calls are reported apart.
- **replica commands**: all calls on replicas: what replication made them apply.
- **round trips** (estimate): ``total_reads_processed`` on masters, minus the
  probe's read and one read per ``replconf``. A pipeline that arrives in one
  read counts once; a large one split over several reads counts more than
  once, so this is an upper bound. With ``--coalesce-window=off`` every call is
  exactly one pipeline per master involved, which checks the estimate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import redis

PROBE_COMMANDS = frozenset({"info"})
REPLICATION_COMMANDS = frozenset({"replconf"})
LUA_DIR = Path(__file__).resolve().parent.parent / "src/ratelimit_ext/store/lua"


def script_commands(lua_dir: Path = LUA_DIR) -> frozenset[str]:
    """Names of the commands the store's Lua scripts call (lower case)."""
    call = re.compile(r"""redis\.p?call\(\s*['"]([A-Za-z|]+)['"]""")
    return frozenset(
        name.lower()
        for path in sorted(lua_dir.glob("*.lua"))
        for name in call.findall(path.read_text())
    )


IN_SCRIPT_COMMANDS = script_commands()

Snapshot = dict[str, dict[str, Any]]  # host:port -> {role, reads, commands}


class RedisProbe:
    """One open connection per node; ``snapshot()`` reads all of them."""

    def __init__(self, nodes: list[str]) -> None:
        self._clients: dict[str, redis.Redis] = {}
        for node in nodes:
            host, _, port = node.rpartition(":")
            client = redis.Redis(
                host=host, port=int(port), socket_timeout=5, socket_connect_timeout=2
            )
            client.ping()  # connect (and its handshake) before the window
            self._clients[node] = client

    def snapshot(self) -> Snapshot:
        result: Snapshot = {}
        for node, client in self._clients.items():
            info = client.execute_command(  # type: ignore[no-untyped-call]
                "INFO", "stats", "commandstats", "replication"
            )
            commands = {
                key.removeprefix("cmdstat_"): int(value["calls"])
                for key, value in info.items()
                if key.startswith("cmdstat_")
            }
            result[node] = {
                "role": str(info.get("role", "master")),
                "reads": int(info.get("total_reads_processed", 0)),
                "commands": commands,
            }
        return result

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = set(before) | set(after)
    changed = {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return {n: d for n, d in sorted(changed.items()) if d}


def summarize(before: Snapshot, after: Snapshot, decisions: int) -> dict[str, Any]:
    """Commands and round trips per decision over the window."""
    masters: dict[str, int] = {}
    in_script: dict[str, int] = {}
    replicas: dict[str, int] = {}
    reads = 0
    for node, end in after.items():
        start = before[node]
        commands = _delta(start["commands"], end["commands"])
        replconf = sum(commands.get(n, 0) for n in REPLICATION_COMMANDS)
        for name, calls in commands.items():
            if name in PROBE_COMMANDS | REPLICATION_COMMANDS:
                continue
            if end["role"] != "master":
                target = replicas
            elif name in IN_SCRIPT_COMMANDS:
                target = in_script
            else:
                target = masters
            target[name] = target.get(name, 0) + calls
        if end["role"] == "master":
            reads += max(0, end["reads"] - start["reads"] - 1 - replconf)
    total = sum(masters.values())

    def per(value: int) -> float | None:
        return round(value / decisions, 3) if decisions else None

    return {
        "decisions": decisions,
        "commands": total,
        "commands_per_decision": per(total),
        "round_trips": reads,
        "round_trips_per_decision": per(reads),
        "by_command": dict(sorted(masters.items())),
        "in_script": dict(sorted(in_script.items())),
        "replica_commands": dict(sorted(replicas.items())),
        "replica_commands_per_decision": per(sum(replicas.values())),
        "masters": sum(1 for end in after.values() if end["role"] == "master"),
    }


def describe(summary: dict[str, Any]) -> str:
    """One line: per-decision calls by command, masters and replicas."""
    decisions = summary["decisions"] or 1

    def listed(counts: dict[str, int]) -> str:
        return " ".join(f"{n}={c / decisions:.3f}" for n, c in counts.items()) or "-"

    return (
        f"{summary['commands']} commands, ~{summary['round_trips']} round trips"
        f" for {summary['decisions']} decisions on {summary['masters']} master(s);"
        f" per decision: {listed(summary['by_command'])};"
        f" inside scripts: {listed(summary['in_script'])};"
        f" replicas applied: {listed(summary['replica_commands'])}"
    )
