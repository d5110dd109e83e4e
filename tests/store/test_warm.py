"""``warm``: a store gets ready before the server reports SERVING."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cluster import ValkeyCluster
from harness.ports import LOOPBACK, free_port
from harness.server import ServerProcess
from harness.valkey import ValkeyServer
from ratelimit_ext.errors import StoreError
from ratelimit_ext.store.base import Store
from ratelimit_ext.store.cluster import RedisClusterStore
from ratelimit_ext.store.redis import RedisStore
from ratelimit_ext.store.script import counter_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ],
)
async def test_warming_loads_the_counter_script_on_every_master(
    request: pytest.FixtureRequest, kind: str
) -> None:
    store: Store
    if kind == "redis":
        server: ValkeyServer = request.getfixturevalue("valkey")
        masters = [server]
        store = RedisStore(server.url)
    else:
        cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        masters = cluster.current_masters()
        store = RedisClusterStore(cluster.url)
    for node in masters:
        with node.client() as client:
            client.script_flush()

    try:
        await store.warm()
    finally:
        await store.close()

    for node in masters:
        with node.client() as client:
            assert client.script_exists(counter_script().sha) == [True]


async def test_warming_a_store_nothing_listens_on_raises_store_error() -> None:
    store = RedisStore(f"redis://{LOOPBACK}:{free_port()}")
    try:
        with pytest.raises(StoreError):
            await store.warm()
    finally:
        await store.close()


def test_a_server_whose_store_is_down_serves_anyway(tmp_path: Path) -> None:
    store = f"redis://{LOOPBACK}:{free_port()}"

    with ServerProcess(ROOT / "config", tmp_path, store=store, metrics=False) as server:
        log = server.log_text()

    assert "store not ready at start, serving anyway" in log
