"""Policy files that change under a running sidecar, and probes that see it.

Every policy here has one domain whose ``generic_key`` rules are named after
their values; the ``probe`` rule's limit is what the tests change. Probes
send ``hits_addend: 0`` for their descriptor, so looking never consumes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.wrappers_pb2 import UInt64Value

from ratelimit_ext.policy.reload import PolicyReloader, ReloadStatus
from ratelimit_ext.server import Sidecar

DOMAIN = "api"
VISIBLE_WITHIN = 2.0
"""Seconds within which a change on disk must be served (the issue's bound)."""


def policy_yaml(domain: str = DOMAIN, unit: str = "day", **limits: int) -> str:
    """A domain whose rule ``generic_key: NAME`` allows ``limits[NAME]``."""
    lines = [f"domain: {domain}", "descriptors:"]
    for name, limit in limits.items():
        lines += [
            "  - key: generic_key",
            f"    value: {name}",
            f"    rate_limit: {{unit: {unit}, requests_per_unit: {limit}}}",
        ]

    return "\n".join(lines) + "\n"


def rls_request(
    domain: str, value: str, *, hits: int | None = None
) -> rls_pb2.RateLimitRequest:
    descriptor = ratelimit_pb2.RateLimitDescriptor()
    descriptor.entries.add(key="generic_key", value=value)
    if hits is not None:
        descriptor.hits_addend.CopyFrom(UInt64Value(value=hits))

    return rls_pb2.RateLimitRequest(domain=domain, descriptors=[descriptor])


@dataclass(frozen=True)
class Seen:
    """One descriptor's status: its limit (None: no limit) and what remains."""

    limit: int | None
    remaining: int

    @classmethod
    def of(cls, status: rls_pb2.RateLimitResponse.DescriptorStatus) -> Seen:
        limit = (
            status.current_limit.requests_per_unit
            if status.HasField("current_limit")
            else None
        )
        return cls(limit, status.limit_remaining)


@dataclass
class Live:
    """An in-process sidecar watching ``config``, with an RLS stub."""

    sidecar: Sidecar
    channel: grpc.aio.Channel
    rls: rls_pb2_grpc.RateLimitServiceStub

    @property
    def reloader(self) -> PolicyReloader:
        assert self.sidecar.reloader is not None
        return self.sidecar.reloader

    @property
    def status(self) -> ReloadStatus:
        return self.reloader.status

    async def look(self, value: str = "probe", domain: str = DOMAIN) -> Seen:
        """The rule's limit and remaining count, without counting a hit."""
        response = await self.rls.ShouldRateLimit(
            rls_request(domain, value, hits=0), timeout=5.0
        )
        return Seen.of(response.statuses[0])

    async def hit(self, value: str, domain: str = DOMAIN) -> Seen:
        response = await self.rls.ShouldRateLimit(
            rls_request(domain, value), timeout=5.0
        )
        return Seen.of(response.statuses[0])

    async def wait_for_limit(
        self,
        limit: int | None,
        value: str = "probe",
        domain: str = DOMAIN,
        within: float = VISIBLE_WITHIN,
    ) -> float:
        """Seconds until ``value``'s limit reads ``limit``; fails after ``within``."""
        started = time.monotonic()
        seen = await self.look(value, domain)
        while seen.limit != limit:
            elapsed = time.monotonic() - started
            assert elapsed < within, (
                f"limit {limit} not served after {elapsed:.2f}s "
                f"(still {seen.limit}); reloader: {self.status}"
            )
            await asyncio.sleep(0.02)
            seen = await self.look(value, domain)

        return time.monotonic() - started

    async def wait_for_status(
        self, done: Callable[[ReloadStatus], bool], within: float = VISIBLE_WITHIN
    ) -> ReloadStatus:
        deadline = time.monotonic() + within
        while not done(self.status):
            assert time.monotonic() < deadline, f"reloader: {self.status}"
            await asyncio.sleep(0.02)

        return self.status


StartLive = Callable[[Path], Awaitable[Live]]


# --- ways files change ------------------------------------------------------


def replace_by_rename(path: Path, text: str) -> None:
    """An editor's save: write a temporary file beside ``path``, rename it over."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class ConfigMapVolume:
    """A directory laid out and updated the way kubelet mounts a ConfigMap.

    Files live in a ``..<timestamp>`` directory, ``..data`` points at it and
    each visible name is a symlink through ``..data``. An update writes a new
    timestamped directory, swaps ``..data`` by renaming a temporary symlink
    over it (atomic), then removes the old directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._stamps = count(1)
        self._current: str | None = None

    def publish(self, files: Mapping[str, str]) -> None:
        stamp = f"..2024_06_01_12_00_{next(self._stamps):02d}.{os.getpid()}"
        directory = self.root / stamp
        directory.mkdir()
        for name, text in files.items():
            (directory / name).write_text(text)
        temporary = self.root / "..data_tmp"
        temporary.symlink_to(stamp)
        os.replace(temporary, self.root / "..data")
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{name}")
        if self._current is not None:
            shutil.rmtree(self.root / self._current)
        self._current = stamp
