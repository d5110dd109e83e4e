"""All or nothing through a real Envoy: a 429 consumes none of the descriptors.

Envoy sends three descriptors per request on the default route: the caller's
identity (limited by tier, 3 a minute for free callers), its tier, and
``generic_key: <x-bucket>``. The domain here sets ``all_or_nothing`` and adds
a bucket that admits one request a minute. Requests that the bucket rejects
must leave the caller's own counter alone, on every store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from e2e.stack import (
    FREE_PER_MINUTE,
    POLICY,
    Edge,
    open_edge,
    show,
    wait_for_window_room,
)

POLICY_ALL_OR_NOTHING: dict[str, Any] = {
    **POLICY,
    "all_or_nothing": True,
    "descriptors": [
        *POLICY["descriptors"],
        {
            "key": "generic_key",
            "value": "tight",
            "rate_limit": {"unit": "minute", "requests_per_unit": 1},
        },
    ],
}


@pytest.fixture(
    scope="module",
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ],
)
def edge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    kind: str = request.param
    store = {
        "memory": lambda: "memory",
        "redis": lambda: request.getfixturevalue("valkey").url,
        "cluster": lambda: request.getfixturevalue("valkey_cluster").url,
    }[kind]()
    workdir = tmp_path_factory.mktemp(f"all-or-nothing-{kind}")
    with ExitStack() as stack:
        yield open_edge(stack, kind, store, workdir, POLICY_ALL_OR_NOTHING)


def test_requests_a_bucket_rejects_leave_the_callers_counter_alone(edge: Edge) -> None:
    wait_for_window_room(10)
    caller = edge.callers["alice"]
    tight = {"x-bucket": "tight"}

    first = edge.get("/", caller, tight)
    rejected = [edge.get("/", caller, tight) for _ in range(3)]
    plain = [edge.get("/", caller) for _ in range(FREE_PER_MINUTE)]

    assert first.status_code == 200, show(first)
    assert [r.status_code for r in rejected] == [429] * 3, show(rejected[0])
    # The caller spent one of 3 on the first request, none on the rejected.
    assert [r.status_code for r in plain] == [200] * (FREE_PER_MINUTE - 1) + [429]
    assert not any(edge.reached_upstream(r) for r in rejected)
