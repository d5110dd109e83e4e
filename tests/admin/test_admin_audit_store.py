"""Audit records in the store: shared by replicas, capped, never failing a change."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from redis.crc import key_slot

from admin.stack import TOKEN, AdminStack, eventually, start_stack, status_of
from harness.cluster import ValkeyCluster
from harness.ports import LOOPBACK, free_port
from harness.valkey import ValkeyServer
from ratelimit_ext._proto.ratelimit_ext.admin.v1 import admin_pb2 as pb
from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.auditlist import StoredAuditList, open_audit_list

KEY = "rlx:{audit}:log"

SHARED_STORES = [
    pytest.param("valkey", id="redis", marks=pytest.mark.redis),
    pytest.param("valkey_cluster", id="cluster", marks=pytest.mark.cluster),
]


@pytest.fixture(params=SHARED_STORES)
def store_server(request: pytest.FixtureRequest) -> ValkeyServer | ValkeyCluster:
    """The session's Redis or Redis Cluster, emptied."""
    server: ValkeyServer | ValkeyCluster = request.getfixturevalue(request.param)
    server.flushall()
    return server


@pytest.fixture
async def audit_list(
    store_server: ValkeyServer | ValkeyCluster,
) -> AsyncIterator[StoredAuditList]:
    """A list keeping five records, on every shared store."""
    opened = open_audit_list(store_server.url, keep=5)
    assert opened is not None
    yield opened
    await opened.close()


def stored_lines(server: ValkeyServer | ValkeyCluster) -> list[str]:
    """The list as the store holds it (on a cluster: read from its master)."""
    node = (
        server.master_for_slot(key_slot(KEY.encode()))
        if isinstance(server, ValkeyCluster)
        else server
    )
    with node.client() as client:
        return [line.decode() for line in client.lrange(KEY, 0, -1)]


def override(identity: str) -> pb.SetOverrideRequest:
    request = pb.SetOverrideRequest(
        subject=pb.Subject(identity=identity), factor=2, reason="store audit"
    )
    request.expires_at.GetCurrentTime()
    request.expires_at.seconds += 3600
    return request


def audit(stack: AdminStack) -> list[tuple[str, str, str]]:
    records = stack.call(
        "ListAudit", pb.ListAuditRequest(limit=50), pb.ListAuditResponse
    ).records
    return [(r.actor, r.method, r.outcome) for r in records]


@pytest.fixture
def two_servers(
    store_server: ValkeyServer | ValkeyCluster, tmp_path: Path
) -> Iterator[tuple[AdminStack, AdminStack]]:
    """Two servers with their own config and audit file, on one store."""
    with ExitStack() as stack:
        # The store flag after the harness' own ``--store memory``: the last wins.
        pair = []
        for name in ("a", "b"):
            running = start_stack(tmp_path / name, "--store", store_server.url)
            stack.callback(running.server.stop)
            pair.append(running)
        yield pair[0], pair[1]


# --- the list itself ----------------------------------------------------------------


async def test_the_list_keeps_the_newest_records_in_order(
    audit_list: StoredAuditList, store_server: ValkeyServer | ValkeyCluster
) -> None:
    """RPUSH and LTRIM together: eight appended, the last five kept, oldest first."""
    for index in range(8):
        await audit_list.append(json.dumps({"n": index}))

    newest = await audit_list.newest(3)
    everything = await audit_list.newest(100)

    assert [json.loads(line)["n"] for line in newest] == [5, 6, 7]
    assert [json.loads(line)["n"] for line in everything] == [3, 4, 5, 6, 7]
    assert stored_lines(store_server) == everything
    assert await audit_list.newest(0) == []


async def test_the_memory_store_has_no_list_and_a_dead_store_raises() -> None:
    """Only shared stores get a list; a store that is down is a StoreError."""
    assert open_audit_list("memory") is None
    dead = open_audit_list(f"redis://:s3cret-pw@{LOOPBACK}:{free_port()}/0")
    assert dead is not None
    try:
        with pytest.raises(StoreError, match="audit list") as raised:
            await dead.append("{}")
        with pytest.raises(StoreError):
            await dead.newest(10)
    finally:
        await dead.close()

    assert "s3cret-pw" not in str(raised.value) + repr(dead)


# --- through the admin API of real servers ---------------------------------------


def test_records_of_every_server_are_in_the_store_and_listed_by_each(
    two_servers: tuple[AdminStack, AdminStack],
    store_server: ValkeyServer | ValkeyCluster,
) -> None:
    """One server's change and the other's refusal: both listed by both servers."""
    a, b = two_servers
    a.call("SetOverride", override("sam"), pb.BypassGrantChange, actor="a@x")
    refused = pb.ApproveBypassRequest(id="g-missing")
    status_of(
        lambda: b.call("ApproveBypass", refused, pb.BypassGrantChange, actor="b@x")
    )

    expected = [
        ("a@x", "SetOverride", "ok"),
        ("b@x", "ApproveBypass", "NOT_FOUND"),
    ]
    assert audit(a) == expected
    assert audit(b) == expected
    stored = [json.loads(line) for line in stored_lines(store_server)]
    assert [(r["actor"], r["method"]) for r in stored] == [e[:2] for e in expected]
    assert stored[0]["after"]["subject"] == {"identity": "sam"}
    # Each file holds its own server's record only.
    assert "b@x" not in a.audit_file.read_text()
    assert "a@x" not in b.audit_file.read_text()
    assert all(TOKEN not in line for line in stored_lines(store_server))


def test_a_store_that_is_down_fails_no_admin_call(tmp_path: Path) -> None:
    """The change is made and audited in the file; ListAudit reads the file."""
    nowhere = f"redis://{LOOPBACK}:{free_port()}/0"
    stack = start_stack(tmp_path, "--store", nowhere)
    try:
        change = stack.call(
            "SetOverride", override("tess"), pb.BypassGrantChange, actor="down@x"
        )
        listed = audit(stack)
        eventually(lambda: "reading the audit file" in stack.server.log_text())
    finally:
        stack.server.stop()
    log = stack.server.log_text()

    assert change.grant.subject.identity == "tess"
    assert listed == [("down@x", "SetOverride", "ok")]
    assert "down@x" in stack.audit_file.read_text()
    assert "audit record kept in" in log
